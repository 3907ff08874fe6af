// sandbox_net_probe: the network probes of test_topology.h as a program, for
// running inside a real sandbox (SandboxService). Prints the probe's result.
//   sandbox_net_probe connect ADDR PORT
//   sandbox_net_probe resolve SERVER NAME TYPE [tcp]   (TYPE: ldns number)
//   sandbox_net_probe resolver                          (the nameserver in resolv.conf)
//   sandbox_net_probe ping ADDR
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "test_topology.h"

int main(int argc, char** argv) {
  using namespace ralph::sandbox::testing;
  std::string command = argc > 1 ? argv[1] : "";
  std::string out;
  if (command == "connect" && argc == 4) {
    out = ProbeConnect(argv[2], static_cast<uint16_t>(atoi(argv[3])));
  } else if (command == "resolve" && (argc == 5 || argc == 6)) {
    out = ProbeResolve(argv[2], argv[3], atoi(argv[4]), argc == 6);
  } else if (command == "ping" && argc == 3) {
    out = ProbePing(argv[2]);
  } else if (command == "resolver" && argc == 2) {
    std::ifstream resolv("/etc/resolv.conf");
    std::string keyword, value;
    while (resolv >> keyword >> value) {
      if (keyword == "nameserver") {
        out = value;
        break;
      }
    }
  } else {
    fprintf(stderr, "usage: see the header of net_probe_main.cpp\n");
    return 2;
  }
  printf("%s\n", out.c_str());
  return 0;
}

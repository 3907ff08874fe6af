// A closed-loop HTTPS load generator for the API benchmark: N keep-alive
// TLS connections (client certificate, TLS 1.3) spread over a few threads,
// each connection with one request in flight, until a total request count;
// latencies (request written to reply read) go into a log-linear histogram.
// The same code drives ralphd and its peer (nginx), so both see one client.
#pragma once

#include <cstdint>
#include <string>

#include "platform/result.h"

namespace ralph::bench {

struct LoadOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string path = "/v1/status";
  std::string cert_file;  // the client certificate (PEM)
  std::string key_file;   // its key (PEM)
  int connections = 16;
  int threads = 2;
  uint64_t requests = 20000;  // in all, over every connection
};

struct LoadResult {
  uint64_t requests = 0;  // replies with status 200
  uint64_t failures = 0;  // other statuses
  double seconds = 0;     // from the first request to the last reply
  double rps = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
  size_t reply_bytes = 0;  // the body of the first reply (to compare the peers' work)
};

// Connects every connection (handshakes before the clock starts), runs the
// load and closes them. kNetwork when a connection fails or a reply is not
// HTTP/1.1 with a Content-Length.
Result<LoadResult> RunLoad(const LoadOptions& options);

}  // namespace ralph::bench

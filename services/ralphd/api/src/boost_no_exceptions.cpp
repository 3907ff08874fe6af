// The tree builds with -fno-exceptions, so Boost (Asio, Beast) calls
// boost::throw_exception instead of throwing; the code here uses only the
// error_code overloads, so reaching this is a bug or an allocation failure.
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <boost/assert/source_location.hpp>
#include <boost/throw_exception.hpp>

namespace boost {

void throw_exception(const std::exception& e) {
  std::fprintf(stderr, "fatal: boost::throw_exception: %s\n", e.what());
  std::abort();
}

void throw_exception(const std::exception& e, const boost::source_location& location) {
  std::fprintf(stderr, "fatal: boost::throw_exception at %s:%u: %s\n", location.file_name(),
               static_cast<unsigned>(location.line()), e.what());
  std::abort();
}

}  // namespace boost

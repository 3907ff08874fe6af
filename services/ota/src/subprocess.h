// Running a helper program (mtools) with an argument vector, no shell.
// Private to services/ota.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "platform/result.h"

namespace ralph::ota {

// Runs argv[0] (PATH lookup) with `argv`, stdin from /dev/null, environment
// plus `extra_env` ("NAME=value"). stdout is streamed to `on_stdout` when
// given (else discarded); stderr is captured (first 4 KiB) for the error.
// kNotFound when the program is missing ("mcopy not found: install mtools"),
// kIo with the exit status and stderr when it fails.
Result<void> RunProgram(const std::vector<std::string>& argv,
                        const std::vector<std::string>& extra_env,
                        const std::function<Result<void>(std::span<const uint8_t>)>& on_stdout);

}  // namespace ralph::ota

# Build hygiene enforced by the compiler (warnings are errors, stack
# protector) and the ASan+UBSan option for the unit and integration tests.
option(RALPH_SANITIZE "Build with AddressSanitizer + UndefinedBehaviorSanitizer" OFF)
option(RALPH_STATIC_BINARIES "Link the appliance binaries statically where possible" OFF)

# Arch selection: one implementation per arch, chosen here, so that no
# source file needs an #ifdef on the architecture.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(RALPH_ARCH x86_64)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  set(RALPH_ARCH aarch64)
else()
  message(FATAL_ERROR "RalphOS supports x86_64 and aarch64, not ${CMAKE_SYSTEM_PROCESSOR}")
endif()

add_library(ralph_build_flags INTERFACE)
target_compile_options(ralph_build_flags INTERFACE
  -fno-exceptions
  -Wall -Wextra -Werror -Wformat=2 -Wnon-virtual-dtor -Wsuggest-override
  -fstack-protector-strong
  $<$<COMPILE_LANGUAGE:CXX>:-Wno-missing-field-initializers>)
target_compile_definitions(ralph_build_flags INTERFACE _GNU_SOURCE FMT_EXCEPTIONS=0)

if(RALPH_SANITIZE)
  target_compile_options(ralph_build_flags INTERFACE
    -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_link_options(ralph_build_flags INTERFACE -fsanitize=address,undefined)
endif()

# ralph_library(<name> SOURCES ... [DEPS ...] [PRIVATE_DEPS ...])
# A layer library with its public include/ folder rooted so that includes read
# "platform/result.h".
function(ralph_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS;INCLUDE_DIRS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include ${ARG_INCLUDE_DIRS})
  target_link_libraries(${name} PUBLIC ralph_build_flags ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

# ralph_binary(<name> SOURCES ... DEPS ...): a thin main.
function(ralph_binary name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ralph_build_flags ${ARG_DEPS})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
endfunction()

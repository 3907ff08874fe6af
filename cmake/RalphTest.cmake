# ralph_cpu_bound(<test>...): each test keeps a CPU busy while it runs, so
# it takes one slot of the `cpus` resource. scripts/test.sh gives ctest as
# many slots as the machine has CPUs and a parallel level two higher: the
# few tests that mostly wait (downloads, marked WAITS) then run beside a
# full set of CPU-bound ones instead of holding one of their places for
# many minutes. Without a resource spec file ctest ignores this.
function(ralph_cpu_bound)
  set_tests_properties(${ARGN} PROPERTIES RESOURCE_GROUPS "cpus:1")
endfunction()

# ralph_test(<name> LABEL unit|integration|e2e SOURCES ... [DEPS ...] [TIMEOUT s]
#            [RESOURCE_LOCK ...] [WAITS])
# One GoogleTest binary registered as one ctest test with its tier label.
# WAITS: the test mostly waits (downloads) rather than computes, so it takes
# no CPU slot (ralph_cpu_bound).
function(ralph_test name)
  cmake_parse_arguments(ARG "WAITS" "LABEL;TIMEOUT" "SOURCES;DEPS;RESOURCE_LOCK" ${ARGN})
  if(NOT ARG_LABEL MATCHES "^(unit|integration|e2e)$")
    message(FATAL_ERROR "ralph_test(${name}): LABEL must be unit, integration or e2e")
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ralph_build_flags ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  get_property(skip_filter GLOBAL PROPERTY RALPH_QEMU_USER_SKIP_FILTER_${name})
  if(CMAKE_CROSSCOMPILING_EMULATOR AND skip_filter)
    get_property(skip_reason GLOBAL PROPERTY RALPH_QEMU_USER_SKIP_REASON_${name})
    add_test(NAME ${name} COMMAND ${CMAKE_SOURCE_DIR}/cmake/qemu_user_test.sh ${name}
      "${skip_filter}" "${skip_reason}" ${CMAKE_CROSSCOMPILING_EMULATOR} $<TARGET_FILE:${name}>)
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77)
    file(APPEND ${CMAKE_BINARY_DIR}/qemu-user-skips.txt "${name}: ${skip_filter}: ${skip_reason}\n")
  else()
    add_test(NAME ${name} COMMAND ${name})
  endif()
  set_tests_properties(${name} PROPERTIES LABELS ${ARG_LABEL} TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "RALPH_SOURCE_DIR=${CMAKE_SOURCE_DIR};RALPH_BINARY_DIR=${CMAKE_BINARY_DIR}")
  if(ARG_RESOURCE_LOCK)
    set_tests_properties(${name} PROPERTIES RESOURCE_LOCK "${ARG_RESOURCE_LOCK}")
  endif()
  if(NOT ARG_WAITS)
    ralph_cpu_bound(${name})
  endif()
endfunction()

# Under qemu-user (a cross-build, whose CMAKE_CROSSCOMPILING_EMULATOR runs
# its tests) some kernel interfaces are not emulated: tests/qemu_user_skips.cmake
# names the test cases that cannot run there and why, with
# ralph_qemu_user_skip(<test> <gtest filter, or *> <reason>). ralph_test
# runs such a test without those cases (cmake/qemu_user_test.sh prints
# them and the reason first; `*` skips the whole test, ctest status Skipped),
# and the build tree lists them all in qemu-user-skips.txt.
function(ralph_qemu_user_skip name filter reason)
  set_property(GLOBAL PROPERTY RALPH_QEMU_USER_SKIP_FILTER_${name} "${filter}")
  set_property(GLOBAL PROPERTY RALPH_QEMU_USER_SKIP_REASON_${name} "${reason}")
endfunction()
if(CMAKE_CROSSCOMPILING_EMULATOR)
  file(REMOVE ${CMAKE_BINARY_DIR}/qemu-user-skips.txt)
  include(${CMAKE_SOURCE_DIR}/tests/qemu_user_skips.cmake)
endif()

# Subfolders with their own CMakeLists.txt are added in name order, so each
# area owns its own file and nobody edits a shared list.
function(ralph_add_subdirectories)
  file(GLOB children LIST_DIRECTORIES true CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*)
  list(SORT children)
  foreach(child ${children})
    # fuzz/ is a CMake project of its own (it needs clang; tests/fuzz).
    get_filename_component(leaf ${child} NAME)
    if(IS_DIRECTORY ${child} AND EXISTS ${child}/CMakeLists.txt AND NOT leaf STREQUAL "fuzz")
      add_subdirectory(${child})
    endif()
  endforeach()
endfunction()

# ralph_test(<name> LABEL unit|integration|e2e SOURCES ... [DEPS ...] [TIMEOUT s]
#            [RESOURCE_LOCK ...])
# One GoogleTest binary registered as one ctest test with its tier label.
function(ralph_test name)
  cmake_parse_arguments(ARG "" "LABEL;TIMEOUT" "SOURCES;DEPS;RESOURCE_LOCK" ${ARGN})
  if(NOT ARG_LABEL MATCHES "^(unit|integration|e2e)$")
    message(FATAL_ERROR "ralph_test(${name}): LABEL must be unit, integration or e2e")
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ralph_build_flags ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS ${ARG_LABEL} TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "RALPH_SOURCE_DIR=${CMAKE_SOURCE_DIR};RALPH_BINARY_DIR=${CMAKE_BINARY_DIR}")
  if(ARG_RESOURCE_LOCK)
    set_tests_properties(${name} PROPERTIES RESOURCE_LOCK "${ARG_RESOURCE_LOCK}")
  endif()
endfunction()

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

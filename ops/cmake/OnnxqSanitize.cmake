# Sanitizer build of the op libraries (development/CI only; never for a wheel).
#
#   cmake -S ops -B build/asan -DONNXQ_SANITIZE=address
#
# ONNXQ_SANITIZE is a comma-separated list passed to -fsanitize= (e.g. "address" or
# "address,undefined"); empty (the default) builds without sanitizers. Python itself is
# not instrumented, so load the result with the runtime preloaded, e.g.
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 python ...
# (scripts/asan_ops_check.sh does the build and the run).
set(ONNXQ_SANITIZE "" CACHE STRING "Build the op libraries with -fsanitize=<list> (e.g. address); empty: off")

# Adds the sanitizer flags to TARGET (compile and link) when ONNXQ_SANITIZE is set.
function(onnxq_sanitize target)
  if(NOT ONNXQ_SANITIZE)
    return()
  endif()
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "onnxq: ONNXQ_SANITIZE needs GCC or Clang (have ${CMAKE_CXX_COMPILER_ID})")
  endif()
  set(_flags "-fsanitize=${ONNXQ_SANITIZE}" -fno-omit-frame-pointer -fno-sanitize-recover=all -g)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${_flags}>)
  get_target_property(_type ${target} TYPE)
  if(_type STREQUAL "OBJECT_LIBRARY")
    # whatever links these objects needs the sanitizer runtime too
    target_link_options(${target} INTERFACE "-fsanitize=${ONNXQ_SANITIZE}")
  else()
    target_link_options(${target} PRIVATE "-fsanitize=${ONNXQ_SANITIZE}")
  endif()
endfunction()

if(ONNXQ_SANITIZE)
  message(STATUS "onnxq: sanitizer build: -fsanitize=${ONNXQ_SANITIZE}")
endif()

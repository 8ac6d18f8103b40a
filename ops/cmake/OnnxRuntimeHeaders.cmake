# Locate the ONNX Runtime C/C++ API headers (onnxruntime_cxx_api.h and friends).
#
# The onnxruntime Python wheel does not ship them and they are never committed here. Order:
#   1. -DONNXRUNTIME_INCLUDE_DIR=... or the environment variable ONNXRUNTIME_INCLUDE_DIR
#   2. system include paths (onnxruntime_cxx_api.h, also under onnxruntime/)
#   3. a fetch of Debian 13 "trixie"'s libonnxruntime-dev headers (cmake/fetch_ort_headers.sh,
#      headers only, nothing installed) into ONNXQ_DEPS_DIR (default: <repo>/.deps, git-ignored);
#      disable with -DONNXQ_FETCH_ORT_HEADERS=OFF or ONNXQ_FETCH_ORT_HEADERS=0 in the environment.
#
# Sets ONNXQ_ORT_INCLUDE_DIR (empty when not found), ONNXQ_ORT_HEADERS_SOURCE and
# ONNXQ_ORT_HEADERS_PROBLEM (why not found).

set(ONNXQ_ORT_INCLUDE_DIR "")
set(ONNXQ_ORT_HEADERS_SOURCE "")
set(ONNXQ_ORT_HEADERS_PROBLEM "")
set(ONNXQ_ORT_MIN_API_VERSION 21)

option(ONNXQ_FETCH_ORT_HEADERS "Fetch Debian's libonnxruntime-dev headers when none are found" ON)
if(DEFINED ENV{ONNXQ_FETCH_ORT_HEADERS})
  set(ONNXQ_FETCH_ORT_HEADERS "$ENV{ONNXQ_FETCH_ORT_HEADERS}")
endif()
get_filename_component(_onnxq_repo_root "${CMAKE_CURRENT_SOURCE_DIR}/.." ABSOLUTE)
set(ONNXQ_DEPS_DIR "${_onnxq_repo_root}/.deps" CACHE PATH "Where fetched third-party headers are cached")
if(DEFINED ENV{ONNXQ_DEPS_DIR})
  set(ONNXQ_DEPS_DIR "$ENV{ONNXQ_DEPS_DIR}")
endif()

# Returns in OUT the directory holding onnxruntime_cxx_api.h under DIR (DIR or DIR/onnxruntime), or "".
function(_onnxq_ort_dir_ok DIR OUT)
  set(${OUT} "" PARENT_SCOPE)
  foreach(_cand "${DIR}" "${DIR}/onnxruntime" "${DIR}/onnxruntime/core/session")
    if(EXISTS "${_cand}/onnxruntime_cxx_api.h" AND EXISTS "${_cand}/onnxruntime_c_api.h")
      file(STRINGS "${_cand}/onnxruntime_c_api.h" _ver REGEX "^#define ORT_API_VERSION [0-9]+")
      string(REGEX MATCH "[0-9]+" _ver "${_ver}")
      if(_ver AND _ver GREATER_EQUAL ${ONNXQ_ORT_MIN_API_VERSION})
        set(${OUT} "${_cand}" PARENT_SCOPE)
        return()
      else()
        message(WARNING "onnxq: ${_cand} has ORT_API_VERSION ${_ver}; need >= ${ONNXQ_ORT_MIN_API_VERSION} (onnxruntime 1.21)")
      endif()
    endif()
  endforeach()
endfunction()

# 1. explicit
set(_explicit "")
if(ONNXRUNTIME_INCLUDE_DIR)
  set(_explicit "${ONNXRUNTIME_INCLUDE_DIR}")
elseif(DEFINED ENV{ONNXRUNTIME_INCLUDE_DIR} AND NOT "$ENV{ONNXRUNTIME_INCLUDE_DIR}" STREQUAL "")
  set(_explicit "$ENV{ONNXRUNTIME_INCLUDE_DIR}")
endif()
if(_explicit)
  _onnxq_ort_dir_ok("${_explicit}" _found)
  if(_found)
    set(ONNXQ_ORT_INCLUDE_DIR "${_found}")
    set(ONNXQ_ORT_HEADERS_SOURCE "ONNXRUNTIME_INCLUDE_DIR")
  else()
    message(WARNING "onnxq: ONNXRUNTIME_INCLUDE_DIR=${_explicit} has no usable onnxruntime_cxx_api.h; searching elsewhere")
  endif()
endif()

# 2. system include paths
if(NOT ONNXQ_ORT_INCLUDE_DIR)
  find_path(ONNXQ_SYSTEM_ORT_INCLUDE_DIR onnxruntime_cxx_api.h PATH_SUFFIXES onnxruntime onnxruntime/core/session)
  if(ONNXQ_SYSTEM_ORT_INCLUDE_DIR)
    _onnxq_ort_dir_ok("${ONNXQ_SYSTEM_ORT_INCLUDE_DIR}" _found)
    if(_found)
      set(ONNXQ_ORT_INCLUDE_DIR "${_found}")
      set(ONNXQ_ORT_HEADERS_SOURCE "system")
    endif()
  endif()
endif()

# 3. fetch (cached in ONNXQ_DEPS_DIR)
if(NOT ONNXQ_ORT_INCLUDE_DIR)
  set(_dest "${ONNXQ_DEPS_DIR}/onnxruntime-headers")
  if(ONNXQ_FETCH_ORT_HEADERS)
    message(STATUS "onnxq: fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev) into ${_dest}")
    execute_process(
      COMMAND sh "${CMAKE_CURRENT_LIST_DIR}/fetch_ort_headers.sh" "${_dest}"
      RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err
      OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 300)
    if(_rc EQUAL 0)
      string(REGEX REPLACE ".*\n" "" _out "${_out}")  # last line is the include dir
      _onnxq_ort_dir_ok("${_out}" _found)
      if(_found)
        set(ONNXQ_ORT_INCLUDE_DIR "${_found}")
        set(ONNXQ_ORT_HEADERS_SOURCE "fetched libonnxruntime-dev into ${_dest}")
      endif()
    else()
      string(STRIP "${_err}" _err)
      string(REGEX REPLACE ".*\n" "" _last "${_err}")
      set(ONNXQ_ORT_HEADERS_PROBLEM "fetching Debian's libonnxruntime-dev headers failed (${_last})")
    endif()
  else()
    set(ONNXQ_ORT_HEADERS_PROBLEM "header fetch disabled (ONNXQ_FETCH_ORT_HEADERS=OFF)")
  endif()
endif()

if(NOT ONNXQ_ORT_INCLUDE_DIR AND NOT ONNXQ_ORT_HEADERS_PROBLEM)
  set(ONNXQ_ORT_HEADERS_PROBLEM "no onnxruntime_cxx_api.h (ORT_API_VERSION >= ${ONNXQ_ORT_MIN_API_VERSION}) found")
endif()

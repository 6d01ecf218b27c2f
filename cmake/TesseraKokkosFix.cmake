# Debian 12's Kokkos (libtrilinos-kokkos-dev, Kokkos 3.4 from Trilinos 13) exports Kokkos::kokkos
# with an include directory that does not exist (<prefix>/lib/include); the headers are in
# <prefix>/include/trilinos, which Kokkos_INCLUDE_DIRS names through a relative path. Point the
# target at the real directory and mark it SYSTEM so its headers do not trip our warnings.
# A site's own Kokkos install (CUDA, OpenMP) has a correct target and is left alone.
if(TARGET Kokkos::kokkos)
  get_target_property(_kk_inc Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
  set(_kk_ok TRUE)
  foreach(_d IN LISTS _kk_inc)
    if(NOT EXISTS "${_d}/Kokkos_Core.hpp")
      set(_kk_ok FALSE)
    endif()
  endforeach()
  if(NOT _kk_ok AND Kokkos_INCLUDE_DIRS)
    set(_kk_real "")
    foreach(_d IN LISTS Kokkos_INCLUDE_DIRS)
      get_filename_component(_r "${_d}" REALPATH)
      list(APPEND _kk_real "${_r}")
    endforeach()
    set_target_properties(Kokkos::kokkos PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kk_real}"
                                                    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${_kk_real}")
    # The exported link interface also carries a stray "-DKOKKOS_DEPENDENCE" entry; drop it.
    get_target_property(_kk_libs Kokkos::kokkos INTERFACE_LINK_LIBRARIES)
    list(FILTER _kk_libs EXCLUDE REGEX "^-D")
    set_target_properties(Kokkos::kokkos PROPERTIES INTERFACE_LINK_LIBRARIES "${_kk_libs}")
    message(STATUS "Kokkos: include directory reset to ${_kk_real} (Debian packaging)")
  endif()
endif()
if(NOT EXISTS "${Kokkos_INCLUDE_DIRS}" AND NOT TARGET Kokkos::kokkos)
  message(FATAL_ERROR "Kokkos not usable (Debian: libtrilinos-kokkos-dev)")
endif()

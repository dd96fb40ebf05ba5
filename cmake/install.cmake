# Install rules beyond the targets' own (pagerd, pagerctl and libclient install themselves):
# systemd units and friends (systemd/CMakeLists.txt) and pagerd-client.pc.

# pagerd.conf(.sample) goes where pagerd.service reads it: CMAKE_INSTALL_FULL_SYSCONFDIR,
# which is <prefix>/etc except for the prefixes GNUInstallDirs maps elsewhere (/usr: /etc).
# Relative when it is under the prefix, so that it follows cmake --install --prefix.
if(CMAKE_INSTALL_FULL_SYSCONFDIR STREQUAL "${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SYSCONFDIR}")
  set(PAGERD_CONFDIR ${CMAKE_INSTALL_SYSCONFDIR}/pagerd)
else()
  set(PAGERD_CONFDIR ${CMAKE_INSTALL_FULL_SYSCONFDIR}/pagerd)
endif()
add_subdirectory(systemd)

# pagerd-client.pc finds the headers and the library relative to its own directory
# (${pcfiledir}), so it stays right wherever the tree is installed or staged
# (cmake --install build --prefix DIR). Absolute LIBDIR/INCLUDEDIR are written as they are.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(PAGERD_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(PAGERD_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(PAGERD_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH _up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" _up "${_up}")
  set(PAGERD_PC_PREFIX "\${pcfiledir}/${_up}")
  set(PAGERD_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(PAGERD_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(cmake/pagerd-client.pc.in pagerd-client.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/pagerd-client.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

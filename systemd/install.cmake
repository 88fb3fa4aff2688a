# Install step of the units and the config (install(SCRIPT), run by cmake --install and by
# CPack). It runs at install time because only then is the prefix known: `cmake --install build
# --prefix DIR` and the package (CPack installs with prefix /usr into a DESTDIR) must each get a
# unit whose ExecStart names the binary and the config they installed, not the configure-time
# prefix. Set by CMakeLists.txt: PX_SOURCE_DIR, PX_BINARY_DIR, PX_BINDIR, PX_SYSCONFDIR.

string(REGEX REPLACE "/+$" "" prefix "${CMAKE_INSTALL_PREFIX}")

# GNUInstallDirs' rule, applied to the prefix actually used: /usr and / keep their config in
# /etc and (Debian 12, before the move to /usr/lib) their units in /lib/systemd/system; any other
# prefix keeps both under itself. An absolute CMAKE_INSTALL_SYSCONFDIR or BINDIR wins.
set(root "${prefix}")
if(prefix STREQUAL "/usr")
  set(root "")
endif()
set(etc "${root}/${PX_SYSCONFDIR}")
set(bin "${prefix}/${PX_BINDIR}")
set(units "${root}/lib/systemd/system")
if(IS_ABSOLUTE "${PX_SYSCONFDIR}")
  set(etc "${PX_SYSCONFDIR}")
endif()
if(IS_ABSOLUTE "${PX_BINDIR}")
  set(bin "${PX_BINDIR}")
endif()

# An operator's edited config survives a reinstall (the package marks it a conffile instead).
# 0640: the config may hold auth_token; the service reads it through group parexd, which
# scripts/install-service and the package's postinst create and give it.
if(EXISTS "$ENV{DESTDIR}${etc}/parexd/parexd.json")
  message(STATUS "Keeping: $ENV{DESTDIR}${etc}/parexd/parexd.json")
else()
  file(INSTALL DESTINATION "${etc}/parexd" TYPE FILE
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ
       FILES "${PX_SOURCE_DIR}/config/parexd.json")
endif()

# One scratch directory per destination, so two installs of one build cannot mix their units.
string(MD5 tag "$ENV{DESTDIR}${prefix}")
set(scratch "${PX_BINARY_DIR}/systemd/install-${tag}")
file(READ "${PX_SOURCE_DIR}/systemd/parexd.service" unit)
string(REGEX MATCH "\nExecStart=[^\n]*" exec "${unit}")
if(NOT exec STREQUAL "\nExecStart=/usr/local/bin/parexd --config /etc/parexd/parexd.json")
  message(FATAL_ERROR "systemd/parexd.service: ExecStart is not the line install.cmake rewrites")
endif()
string(REPLACE "${exec}" "\nExecStart=${bin}/parexd --config ${etc}/parexd/parexd.json" unit
       "${unit}")
file(WRITE "${scratch}/parexd.service" "${unit}")
file(INSTALL DESTINATION "${units}" TYPE FILE
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
     FILES "${scratch}/parexd.service" "${PX_SOURCE_DIR}/systemd/parexd.socket")

# Third-party libraries, each as an imported target. Each C library is linked
# PRIVATE by the one library that owns it, so its headers appear nowhere else
# (docs/architecture.md "Layers and what may use what").
find_package(PkgConfig REQUIRED)
find_package(ZLIB REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(fmt REQUIRED)
find_package(GTest REQUIRED)
# Command lines (platform/cli.h; header-only, used by one -fexceptions TU).
find_package(CLI11 CONFIG REQUIRED)

pkg_check_modules(EFIVAR REQUIRED IMPORTED_TARGET efivar)
pkg_check_modules(EFIBOOT REQUIRED IMPORTED_TARGET efiboot)
pkg_check_modules(BLKID REQUIRED IMPORTED_TARGET blkid)
pkg_check_modules(FDISK REQUIRED IMPORTED_TARGET fdisk)
pkg_check_modules(SECCOMP REQUIRED IMPORTED_TARGET libseccomp)
pkg_check_modules(CAP REQUIRED IMPORTED_TARGET libcap)
pkg_check_modules(NFTNL REQUIRED IMPORTED_TARGET libnftnl)
pkg_check_modules(MNL REQUIRED IMPORTED_TARGET libmnl)
pkg_check_modules(SQLITE3 REQUIRED IMPORTED_TARGET sqlite3)
pkg_check_modules(TINYXML2 REQUIRED IMPORTED_TARGET tinyxml2)
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
find_package(nlohmann_json 3 REQUIRED)
find_package(benchmark QUIET)

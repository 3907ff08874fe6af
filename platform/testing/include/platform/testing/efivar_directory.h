// A directory-backed EFI variable store for a test binary. libefivar reads
// EFIVARFS_PATH once, before main() runs, so setting it inside a test is too
// late: main() calls RunWithEfivarDirectory instead, which makes a fresh
// directory (TMPDIR/<prefix>-XXXXXX), runs this same binary again with
// EFIVARFS_PATH pointing at it, and removes the directory once that child
// has exited, however it ended. In the child, `tests` runs.
//
//   int main(int argc, char** argv) {
//     return ralph::testing::RunWithEfivarDirectory(argv, "ralph-boot-it", [&] {
//       ::testing::InitGoogleTest(&argc, argv);
//       return RUN_ALL_TESTS();
//     });
//   }
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ralph::testing {

// The exit status of the child (1 when it could not be run or was killed,
// with the reason on stderr).
int RunWithEfivarDirectory(char** argv, const std::string& prefix,
                           const std::function<int()>& tests);

// Removes `dir` and everything in it, clearing the immutable flag that
// efivarfs-like stores put on variable files first.
void RemoveEfivarDirectory(const std::string& dir);

// In the child: the store's directory (EFIVARFS_PATH, ending in '/'), and
// a file's raw bytes as the store keeps them (a variable file: 4 attribute
// bytes, then the data), read ({} when missing) and written whole.
std::string EfivarDirectoryPath();
std::vector<uint8_t> ReadRawFile(const std::string& path);
void WriteRawFile(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace ralph::testing

// Linux system calls that Glibc's Swift overlay does not expose (they need _GNU_SOURCE or ioctl
// request numbers): hole punching, in-kernel copies, reflinks and filesystem freeze/thaw.
#ifndef BULWARK_CLINUX_H
#define BULWARK_CLINUX_H

#include <stdint.h>
#include <sys/types.h>

/// fallocate(2); returns 0 or -1 with errno set.
int bulwark_fallocate(int fd, int mode, int64_t offset, int64_t length);
/// copy_file_range(2) with explicit offsets, which it advances; returns bytes copied or -1.
int64_t bulwark_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t length);
/// ioctl(dest, FICLONE, src): make dest share src's extents (reflink); 0 or -1.
int bulwark_ficlone(int dest_fd, int src_fd);
/// ioctl(dest, FICLONERANGE): make `length` bytes of dest at `dest_offset` share src's extents at
/// `src_offset` (offsets and length aligned to the filesystem block); 0 or -1.
int bulwark_ficlone_range(int dest_fd, int64_t dest_offset, int src_fd, int64_t src_offset, int64_t length);
/// ioctl(fd, FIFREEZE) on a directory of the mounted filesystem; 0 or -1.
int bulwark_fifreeze(int fd);
/// ioctl(fd, FITHAW); 0 or -1.
int bulwark_fithaw(int fd);
/// syncfs(2); 0 or -1.
int bulwark_syncfs(int fd);
/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writeback of the range without waiting; 0 or -1.
int bulwark_start_writeback(int fd, int64_t offset, int64_t length);

/// fork + execve with explicit descriptors: `in`, `out`, `err` become 0, 1, 2 (-1: /dev/null) and
/// `keep[i]` becomes descriptor 3+i; every other descriptor is closed, signal dispositions and the
/// mask are reset. `flags`: BULWARK_SPAWN_SETSID (new session) or BULWARK_SPAWN_SETPGID (new process
/// group). Returns the child's pid, or -1 with errno set.
pid_t bulwark_spawn(const char *path, char *const argv[], char *const envp[], int in, int out, int err,
                    const int *keep, int nkeep, int flags);

/// pipe2(fds, O_CLOEXEC); 0 or -1.
int bulwark_pipe_cloexec(int fds[2]);

/// ioctl(fd, BLKGETSIZE64): a block device's size in bytes into *size; 0 or -1.
int bulwark_blk_size(int fd, uint64_t *size);
/// ioctl(fd, BLKSSZGET / BLKPBSZGET): a block device's logical and physical sector sizes; 0 or -1.
int bulwark_blk_sector_sizes(int fd, int *logical, unsigned int *physical);

#define BULWARK_SPAWN_SETSID 0x01
#define BULWARK_SPAWN_SETPGID 0x02

#define BULWARK_FALLOC_KEEP_SIZE 0x01
#define BULWARK_FALLOC_PUNCH_HOLE 0x02
#define BULWARK_FALLOC_ZERO_RANGE 0x10

#endif

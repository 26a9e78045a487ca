#define _GNU_SOURCE
#include "CLinux.h"
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

int bulwark_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}

int64_t bulwark_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t length) {
    loff_t in = (loff_t)*off_in, out = (loff_t)*off_out;
    ssize_t n = copy_file_range(fd_in, &in, fd_out, &out, length, 0);
    *off_in = (int64_t)in;
    *off_out = (int64_t)out;
    return (int64_t)n;
}

int bulwark_ficlone(int dest_fd, int src_fd) { return ioctl(dest_fd, FICLONE, src_fd); }
int bulwark_fifreeze(int fd) { return ioctl(fd, FIFREEZE, 0); }
int bulwark_fithaw(int fd) { return ioctl(fd, FITHAW, 0); }
int bulwark_syncfs(int fd) { return syncfs(fd); }

int bulwark_start_writeback(int fd, int64_t offset, int64_t length) {
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
}

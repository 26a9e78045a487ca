#define _GNU_SOURCE
#include "CLinux.h"
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <signal.h>
#include <errno.h>

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
int bulwark_ficlone_range(int dest_fd, int64_t dest_offset, int src_fd, int64_t src_offset, int64_t length) {
    struct file_clone_range range = { .src_fd = src_fd, .src_offset = (uint64_t)src_offset,
                                      .src_length = (uint64_t)length, .dest_offset = (uint64_t)dest_offset };
    return ioctl(dest_fd, FICLONERANGE, &range);
}
int bulwark_fifreeze(int fd) { return ioctl(fd, FIFREEZE, 0); }
int bulwark_fithaw(int fd) { return ioctl(fd, FITHAW, 0); }
int bulwark_syncfs(int fd) { return syncfs(fd); }

pid_t bulwark_spawn(const char *path, char *const argv[], char *const envp[], int in, int out, int err,
                    const int *keep, int nkeep, int flags) {
    if (nkeep < 0 || nkeep > 64) { errno = EINVAL; return -1; }
    pid_t pid = fork();
    if (pid != 0) return pid;
    /* Child: only async-signal-safe calls from here on. */
    if (flags & BULWARK_SPAWN_SETSID) setsid();
    else if (flags & BULWARK_SPAWN_SETPGID) setpgid(0, 0);
    int null = open("/dev/null", O_RDWR);
    int src[3 + 64];
    src[0] = in >= 0 ? in : null; src[1] = out >= 0 ? out : null; src[2] = err >= 0 ? err : null;
    for (int i = 0; i < nkeep; i++) src[3 + i] = keep[i];
    int high[3 + 64];
    for (int i = 0; i < 3 + nkeep; i++) {
        high[i] = fcntl(src[i], F_DUPFD, 512);
        if (high[i] < 0) _exit(126);
    }
    for (int i = 0; i < 3 + nkeep; i++) if (dup2(high[i], i) < 0) _exit(126);
    close_range(3 + nkeep, ~0U, 0);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < 32; s++) if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    execve(path, argv, envp);
    _exit(127);
}

int bulwark_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int bulwark_start_writeback(int fd, int64_t offset, int64_t length) {
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
}

int bulwark_blk_size(int fd, uint64_t *size) { return ioctl(fd, BLKGETSIZE64, size); }
int bulwark_blk_sector_sizes(int fd, int *logical, unsigned int *physical) {
    if (ioctl(fd, BLKSSZGET, logical) != 0) return -1;
    return ioctl(fd, BLKPBSZGET, physical);
}

#define FUSE_USE_VERSION 35
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// `fuse_new` is a macro (symbol versions) that Swift cannot call: a function in its place.
// `argv` is copied by libfuse's option parser; the caller keeps its strings alive for the call.
static inline struct fuse *bulwark_fuse_new(int argc, char **argv, const struct fuse_operations *ops, void *data) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse *f = fuse_new(&args, ops, sizeof(*ops), data);
    fuse_opt_free_args(&args);
    return f;
}

// The bit fields of `fuse_file_info`, set from Swift.
static inline void bulwark_fuse_keep_cache(struct fuse_file_info *fi) { fi->keep_cache = 1; }

#include <libsmbclient.h>

/* Samba's thread interface (lib/util/smb_threads.h, not installed with the headers; the function
 * `smb_thread_set_functions` is exported by libsamba-util, which libsmbclient links): a table of
 * mutex and thread-local-storage functions. Once installed, Samba keeps its talloc stack frames per
 * thread instead of in one global, which is what `smbc_thread_posix` (declared in libsmbclient.h but
 * not exported by Debian's build) would install. The layout must match Samba's exactly. */
struct bulwark_smb_thread_functions {
    int (*create_mutex)(const char *lockname, void **pplock, const char *location);
    void (*destroy_mutex)(void *plock, const char *location);
    int (*lock_mutex)(void *plock, int lock_type, const char *location);
    int (*create_tls)(const char *keyname, void **ppkey, const char *location);
    void (*destroy_tls)(void **pkey, const char *location);
    int (*set_tls)(void *pkey, const void *pval, const char *location);
    void *(*get_tls)(void *pkey, const char *location);
};

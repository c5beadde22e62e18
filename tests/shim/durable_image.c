/*
 * durable_image.so — an LD_PRELOAD shim that keeps a "durable image" of one directory:
 * what would be on disk after a power loss at this instant.
 *
 *   KX_DURABLE_DIR=/abs/data-dir  KX_DURABLE_IMAGE=/abs/image-dir  LD_PRELOAD=durable_image.so
 *
 * The image starts as a copy of the directory (the test harness makes it). The shim
 * records which byte ranges of each file (by inode) were written — write, pwrite,
 * writev, pwritev and their 64-bit names — and copies those ranges from the file into
 * the image only when fsync() or fdatasync() succeeds on any descriptor of that file.
 * After a SIGKILL, replacing the directory with the image is a power loss: every write
 * that was not yet fsynced is gone.
 *
 * What it models:
 *   - file data is durable only after fsync/fdatasync of that file (any fd of the inode);
 *   - sync_file_range() makes nothing durable (it flushes neither the disk's write cache
 *     nor the file's metadata; man 2 sync_file_range: "no guarantee");
 *   - truncation (ftruncate, O_TRUNC) and the file's size become durable at the next
 *     fsync of the file;
 *   - a file never fsynced does not exist in the image.
 *   - directory entries: rename and unlink through libc are applied to the image when
 *     they happen (as ext4 with data=ordered and auto_da_alloc mostly behaves); those made
 *     by raw syscalls that bypass libc (rustix, inside the tempfile crate) become durable
 *     at the next fsync of their directory, which then reconciles the image with it.
 * What it does not model:
 *   - a new file's directory entry is durable with its first fsync (ext4-like), not
 *     only after an fsync of its directory;
 *   - torn or reordered sectors inside one fsynced range, and writes through mmap,
 *     copy_file_range or sendfile (the server and sled use none of these for its store).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FILES 256
#define MAX_RANGES 1024

struct range { off_t start, end; };

struct file {
    int used;
    dev_t dev;
    ino_t ino;
    char rel[PATH_MAX];      /* path relative to the watched dir */
    struct range ranges[MAX_RANGES];
    size_t n;
    int whole;               /* too many ranges: copy the whole file at fsync */
    off_t trunc_to;          /* smallest size it was truncated to since the last fsync; -1 */
};

static struct file files[MAX_FILES];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char dir[PATH_MAX];
static size_t dirlen;
static char image[PATH_MAX];

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

static void init(void) {
#define LOAD(name) real_##name = dlsym(RTLD_NEXT, #name)
    LOAD(write); LOAD(pwrite); LOAD(pwrite64); LOAD(writev); LOAD(pwritev); LOAD(pwritev64);
    LOAD(fsync); LOAD(fdatasync); LOAD(ftruncate); LOAD(ftruncate64);
    LOAD(open); LOAD(open64); LOAD(openat); LOAD(openat64);
    LOAD(rename); LOAD(renameat); LOAD(renameat2); LOAD(unlink); LOAD(unlinkat);
#undef LOAD
    const char *d = getenv("KX_DURABLE_DIR");
    const char *i = getenv("KX_DURABLE_IMAGE");
    if (d && i && strlen(d) < PATH_MAX - 1 && strlen(i) < PATH_MAX) {
        snprintf(dir, sizeof dir, "%s", d);
        dirlen = strlen(dir);
        while (dirlen > 1 && dir[dirlen - 1] == '/') dir[--dirlen] = 0;
        snprintf(image, sizeof image, "%s", i);
    }
}

static int active(void) {
    pthread_once(&once, init);
    return dirlen > 0;
}

/* The path relative to the watched dir of an absolute path, or NULL. */
static const char *relative(const char *abs) {
    if (strncmp(abs, dir, dirlen) == 0 && abs[dirlen] == '/') return abs + dirlen + 1;
    return NULL;
}

/* Make `path` (relative to `dirfd`) absolute in `out`. 0 on success. */
static int absolute(int dirfd, const char *path, char *out) {
    if (path[0] == '/') {
        snprintf(out, PATH_MAX, "%s", path);
        return 0;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return -1;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return -1;
        base[n] = 0;
    }
    if (snprintf(out, PATH_MAX, "%s/%s", base, path) >= PATH_MAX) return -1;
    return 0;
}

/* The tracked file behind `fd` (a regular file under the dir), or NULL. Holds mu. */
static struct file *track(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return NULL;
    struct file *free_slot = NULL;
    for (int k = 0; k < MAX_FILES; k++) {
        if (files[k].used && files[k].dev == st.st_dev && files[k].ino == st.st_ino) return &files[k];
        if (!files[k].used && !free_slot) free_slot = &files[k];
    }
    char link[64], abs[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, abs, sizeof abs - 1);
    if (n < 0) return NULL;
    abs[n] = 0;
    const char *rel = relative(abs);
    if (!rel || !free_slot) return NULL;
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->used = 1;
    free_slot->dev = st.st_dev;
    free_slot->ino = st.st_ino;
    free_slot->trunc_to = -1;
    snprintf(free_slot->rel, PATH_MAX, "%s", rel);
    return free_slot;
}

static void add_range(struct file *f, off_t start, off_t end) {
    if (end <= start || f->whole) return;
    if (f->n > 0) {
        struct range *last = &f->ranges[f->n - 1];
        if (start <= last->end && end >= last->start) {
            if (start < last->start) last->start = start;
            if (end > last->end) last->end = end;
            return;
        }
    }
    if (f->n == MAX_RANGES) {
        f->whole = 1;
        f->n = 0;
        return;
    }
    f->ranges[f->n].start = start;
    f->ranges[f->n].end = end;
    f->n++;
}

static void wrote(int fd, off_t start, ssize_t len) {
    if (len <= 0 || !active()) return;
    pthread_mutex_lock(&mu);
    struct file *f = track(fd);
    if (f) {
        if (start < 0) { /* write/writev: the offset moved past what was written */
            off_t end = lseek(fd, 0, SEEK_CUR);
            start = end - len;
        }
        add_range(f, start, start + len);
    }
    pthread_mutex_unlock(&mu);
}

static void mkdirs_for(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0700);
            *p = '/';
        }
    }
}

static void copy_range(int from, int to, off_t start, off_t end) {
    char buf[65536];
    while (start < end) {
        size_t want = (size_t)(end - start) < sizeof buf ? (size_t)(end - start) : sizeof buf;
        ssize_t n = pread(from, buf, want, start);
        if (n <= 0) return;
        if (real_pwrite(to, buf, (size_t)n, start) != n) return;
        start += n;
    }
}

/* fsync succeeded on `fd`: its file's recorded ranges become durable. Holds mu. */
static void persist(int fd, struct file *f) {
    char ipath[PATH_MAX];
    if (snprintf(ipath, sizeof ipath, "%s/%s", image, f->rel) >= PATH_MAX) return;
    mkdirs_for(ipath);
    int ifd = real_open(ipath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (ifd < 0) return;
    /* Read through a descriptor of our own: `fd` may be write-only (O_WRONLY, O_APPEND
     * logs), and the kernel persists a file's data whatever mode it was written in. */
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int rfd = real_open(link, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (rfd >= 0 && fstat(fd, &st) == 0) {
        if (f->trunc_to >= 0) real_ftruncate(ifd, f->trunc_to);
        if (f->whole) {
            copy_range(rfd, ifd, 0, st.st_size);
        } else {
            for (size_t k = 0; k < f->n; k++) {
                off_t end = f->ranges[k].end < st.st_size ? f->ranges[k].end : st.st_size;
                copy_range(rfd, ifd, f->ranges[k].start, end);
            }
        }
        real_ftruncate(ifd, st.st_size);
    }
    if (rfd >= 0) close(rfd);
    close(ifd);
    f->n = 0;
    f->whole = 0;
    f->trunc_to = -1;
}

/*
 * fsync of a directory under the dir: its entries as they are now become durable. This
 * catches renames and unlinks made by raw syscalls that bypass libc (rustix, used by
 * the tempfile crate): a tracked file found under a new name is renamed in the image,
 * and image files the directory no longer has are removed. Holds mu.
 */
static void dir_synced(int fd) {
    char link[64], abs[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, abs, sizeof abs - 1);
    if (n < 0) return;
    abs[n] = 0;
    const char *rel = strcmp(abs, dir) == 0 ? "" : relative(abs);
    if (!rel) return;
    char idir[PATH_MAX];
    if (snprintf(idir, sizeof idir, "%s/%s", image, rel) >= PATH_MAX) return;
    DIR *d = opendir(abs);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[PATH_MAX], nrel[PATH_MAX];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", abs, e->d_name) >= PATH_MAX) continue;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (snprintf(nrel, sizeof nrel, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= PATH_MAX) continue;
        for (int k = 0; k < MAX_FILES; k++) {
            struct file *f = &files[k];
            if (f->used && f->dev == st.st_dev && f->ino == st.st_ino && strcmp(f->rel, nrel) != 0) {
                char oi[PATH_MAX], ni[PATH_MAX];
                if (snprintf(oi, sizeof oi, "%s/%s", image, f->rel) >= PATH_MAX) continue;
                if (snprintf(ni, sizeof ni, "%s/%s", image, nrel) >= PATH_MAX) continue;
                mkdirs_for(ni);
                if (real_rename(oi, ni) != 0) real_unlink(ni);
                snprintf(f->rel, PATH_MAX, "%s", nrel);
            }
        }
    }
    closedir(d);
    DIR *id = opendir(idir);
    if (!id) return;
    while ((e = readdir(id))) {
        char real_path[PATH_MAX], ipath[PATH_MAX];
        struct stat st;
        if (snprintf(real_path, sizeof real_path, "%s/%s", abs, e->d_name) >= PATH_MAX) continue;
        if (snprintf(ipath, sizeof ipath, "%s/%s", idir, e->d_name) >= PATH_MAX) continue;
        if (lstat(ipath, &st) == 0 && S_ISREG(st.st_mode) && lstat(real_path, &st) != 0)
            real_unlink(ipath);
    }
    closedir(id);
}

static void synced(int fd) {
    if (!active()) return;
    pthread_mutex_lock(&mu);
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        dir_synced(fd);
    } else {
        struct file *f = track(fd);
        if (f) persist(fd, f);
    }
    pthread_mutex_unlock(&mu);
}

static void truncated(int fd, off_t len) {
    if (!active()) return;
    pthread_mutex_lock(&mu);
    struct file *f = track(fd);
    if (f && (f->trunc_to < 0 || len < f->trunc_to)) f->trunc_to = len;
    pthread_mutex_unlock(&mu);
}

/* ------------------------------------------------------------------ interposed */

ssize_t write(int fd, const void *buf, size_t n) {
    pthread_once(&once, init);
    ssize_t r = real_write(fd, buf, n);
    wrote(fd, -1, r);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwrite(fd, buf, n, off);
    wrote(fd, off, r);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    wrote(fd, off, r);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    pthread_once(&once, init);
    ssize_t r = real_writev(fd, iov, cnt);
    wrote(fd, -1, r);
    return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwritev(fd, iov, cnt, off);
    wrote(fd, off, r);
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    pthread_once(&once, init);
    ssize_t r = real_pwritev64(fd, iov, cnt, off);
    wrote(fd, off, r);
    return r;
}

int fsync(int fd) {
    pthread_once(&once, init);
    int r = real_fsync(fd);
    if (r == 0) synced(fd);
    return r;
}

int fdatasync(int fd) {
    pthread_once(&once, init);
    int r = real_fdatasync(fd);
    if (r == 0) synced(fd);
    return r;
}

int ftruncate(int fd, off_t len) {
    pthread_once(&once, init);
    int r = real_ftruncate(fd, len);
    if (r == 0) truncated(fd, len);
    return r;
}

int ftruncate64(int fd, off64_t len) {
    pthread_once(&once, init);
    int r = real_ftruncate64(fd, len);
    if (r == 0) truncated(fd, len);
    return r;
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

static int opened(int fd, int flags) {
    if (fd >= 0 && (flags & O_TRUNC)) truncated(fd, 0);
    return fd;
}

int open(const char *path, int flags, ...) {
    pthread_once(&once, init);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return opened(real_open(path, flags, m), flags);
}

int open64(const char *path, int flags, ...) {
    pthread_once(&once, init);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return opened(real_open64(path, flags, m), flags);
}

int openat(int dirfd, const char *path, int flags, ...) {
    pthread_once(&once, init);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return opened(real_openat(dirfd, path, flags, m), flags);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    pthread_once(&once, init);
    va_list ap;
    va_start(ap, flags);
    mode_t m = mode_arg(flags, ap);
    va_end(ap);
    return opened(real_openat64(dirfd, path, flags, m), flags);
}

/* A rename inside the dir: move the durable copy too (metadata is not modelled). */
static void renamed(int olddirfd, const char *oldp, int newdirfd, const char *newp) {
    char oa[PATH_MAX], na[PATH_MAX];
    if (!active() || absolute(olddirfd, oldp, oa) || absolute(newdirfd, newp, na)) return;
    const char *orel = relative(oa), *nrel = relative(na);
    if (!orel || !nrel) return;
    char oi[PATH_MAX], ni[PATH_MAX];
    if (snprintf(oi, sizeof oi, "%s/%s", image, orel) >= PATH_MAX) return;
    if (snprintf(ni, sizeof ni, "%s/%s", image, nrel) >= PATH_MAX) return;
    pthread_mutex_lock(&mu);
    mkdirs_for(ni);
    if (real_rename(oi, ni) != 0) real_unlink(ni); /* source never durable: target gone */
    for (int k = 0; k < MAX_FILES; k++)
        if (files[k].used && strcmp(files[k].rel, orel) == 0) snprintf(files[k].rel, PATH_MAX, "%s", nrel);
    pthread_mutex_unlock(&mu);
}

static void unlinked(int dirfd, const char *path, int flags) {
    char a[PATH_MAX];
    if (!active() || absolute(dirfd, path, a)) return;
    const char *rel = relative(a);
    if (!rel) return;
    char ip[PATH_MAX];
    if (snprintf(ip, sizeof ip, "%s/%s", image, rel) >= PATH_MAX) return;
    pthread_mutex_lock(&mu);
    if (flags & AT_REMOVEDIR) rmdir(ip); else real_unlink(ip);
    for (int k = 0; k < MAX_FILES; k++)
        if (files[k].used && strcmp(files[k].rel, rel) == 0) files[k].used = 0;
    pthread_mutex_unlock(&mu);
}

int rename(const char *o, const char *n) {
    pthread_once(&once, init);
    int r = real_rename(o, n);
    if (r == 0) renamed(AT_FDCWD, o, AT_FDCWD, n);
    return r;
}

int renameat(int od, const char *o, int nd, const char *n) {
    pthread_once(&once, init);
    int r = real_renameat(od, o, nd, n);
    if (r == 0) renamed(od, o, nd, n);
    return r;
}

int renameat2(int od, const char *o, int nd, const char *n, unsigned int flags) {
    pthread_once(&once, init);
    int r = real_renameat2(od, o, nd, n, flags);
    if (r == 0) renamed(od, o, nd, n);
    return r;
}

int unlink(const char *p) {
    pthread_once(&once, init);
    int r = real_unlink(p);
    if (r == 0) unlinked(AT_FDCWD, p, 0);
    return r;
}

int unlinkat(int d, const char *p, int flags) {
    pthread_once(&once, init);
    int r = real_unlinkat(d, p, flags);
    if (r == 0) unlinked(d, p, flags);
    return r;
}

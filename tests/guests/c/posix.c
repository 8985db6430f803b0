/* Exercises the file system and process calls through wasi-libc's POSIX layer, as C programs
 * use them, and prints one "key: value" line per check. A wrong answer fails the guest.
 * Expects a writable, empty directory preopened as /sandbox. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

static int failed = 0;

static void check_int(const char *key, long got, long want) {
    printf("%s: %ld\n", key, got);
    if (got != want) {
        fprintf(stderr, "FAIL %s: got %ld, want %ld\n", key, got, want);
        failed++;
    }
}

/* Runs a call that must fail and checks errno. */
#define FAILS(key, call, err) do { errno = 0; long r_ = (long)(call); \
    check_int(key, r_ == -1 ? errno : 0, err); } while (0)

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    check_int("argc", argc, 3);
    check_int("argv[1] is one", strcmp(argv[1], "one"), 0);
    const char *v = getenv("TABI_TEST");
    check_int("getenv", v != NULL && strcmp(v, "yes") == 0, 1);

    check_int("chdir", chdir("/sandbox"), 0);
    check_int("mkdir", mkdir("dir", 0755), 0);
    FAILS("mkdir EEXIST", mkdir("dir", 0755), EEXIST);
    int fd = open("dir/data.bin", O_CREAT | O_RDWR | O_TRUNC, 0644);
    check_int("open creat", fd >= 0, 1);
    check_int("write", write(fd, "0123456789", 10), 10);
    check_int("lseek", lseek(fd, 2, SEEK_SET), 2);
    char buf[32] = {0};
    check_int("read", read(fd, buf, 4), 4);
    check_int("read data", strcmp(buf, "2345"), 0);
    check_int("pwrite", pwrite(fd, "AB", 2, 8), 2);
    check_int("pread", pread(fd, buf, 10, 0), 10);
    check_int("pread data", memcmp(buf, "01234567AB", 10), 0);
    check_int("ftruncate", ftruncate(fd, 4), 0);
    struct stat st;
    check_int("fstat", fstat(fd, &st), 0);
    check_int("fstat size", st.st_size, 4);
    check_int("fstat regular", S_ISREG(st.st_mode), 1);
    check_int("posix_fallocate", posix_fallocate(fd, 0, 64), 0);
    fstat(fd, &st);
    check_int("size after fallocate", st.st_size, 64);
    check_int("posix_fadvise", posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL), 0);
    check_int("fsync", fsync(fd), 0);
    check_int("fdatasync", fdatasync(fd), 0);
    struct timespec times[2] = {{.tv_sec = 100, .tv_nsec = 0}, {.tv_sec = 200, .tv_nsec = 5}};
    check_int("futimens", futimens(fd, times), 0);
    fstat(fd, &st);
    check_int("mtime sec", st.st_mtim.tv_sec, 200);
    check_int("mtime nsec", st.st_mtim.tv_nsec, 5);
    int flags = fcntl(fd, F_GETFL);
    check_int("fcntl setfl append", fcntl(fd, F_SETFL, flags | O_APPEND), 0);
    check_int("fcntl getfl append", (fcntl(fd, F_GETFL) & O_APPEND) != 0, 1);
    check_int("close", close(fd), 0);
    FAILS("close EBADF", close(fd), EBADF);
    FAILS("read EBADF", read(fd, buf, 1), EBADF);

    FAILS("open ENOENT", open("missing.txt", O_RDONLY), ENOENT);
    FAILS("open EEXIST", open("dir/data.bin", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
    FAILS("open ENOTDIR", open("dir/data.bin/x", O_RDONLY), ENOTDIR);
    FAILS("open EISDIR", open("dir", O_WRONLY), EISDIR);
    FAILS("open O_DIRECTORY on file", open("dir/data.bin", O_RDONLY | O_DIRECTORY), ENOTDIR);
    FAILS("escape with dotdot", open("../../etc/passwd", O_RDONLY), EPERM);
    int ro = open("dir/data.bin", O_RDONLY);
    FAILS("write read-only EBADF", write(ro, "x", 1), EBADF);
    close(ro);

    check_int("symlink", symlink("data.bin", "dir/link"), 0);
    FAILS("symlink EEXIST", symlink("data.bin", "dir/link"), EEXIST);
    char target[64] = {0};
    check_int("readlink", readlink("dir/link", target, sizeof target), 8);
    check_int("readlink data", strcmp(target, "data.bin"), 0);
    check_int("lstat", lstat("dir/link", &st), 0);
    check_int("lstat is link", S_ISLNK(st.st_mode), 1);
    check_int("stat follows", stat("dir/link", &st), 0);
    check_int("stat size", st.st_size, 64);
    check_int("symlink loop a", symlink("b", "loop-a"), 0);
    check_int("symlink loop b", symlink("loop-a", "b"), 0);
    FAILS("open ELOOP", open("loop-a", O_RDONLY), ELOOP);
    FAILS("open O_NOFOLLOW", open("dir/link", O_RDONLY | O_NOFOLLOW), ELOOP);

    check_int("link", link("dir/data.bin", "dir/hard.bin"), 0);
    stat("dir/data.bin", &st);
    check_int("nlink", st.st_nlink, 2);
    check_int("rename", rename("dir/hard.bin", "moved.bin"), 0);
    FAILS("rename ENOENT", rename("dir/hard.bin", "x"), ENOENT);
    check_int("mkdir sub", mkdir("dir/sub", 0755), 0);
    FAILS("rmdir ENOTEMPTY", rmdir("dir"), ENOTEMPTY);
    FAILS("unlink EISDIR", unlink("dir/sub"), EISDIR);
    FAILS("rmdir ENOTDIR", rmdir("moved.bin"), ENOTDIR);
    struct timespec t2[2] = {{.tv_sec = 0, .tv_nsec = UTIME_OMIT}, {.tv_sec = 300, .tv_nsec = 0}};
    check_int("utimensat", utimensat(AT_FDCWD, "moved.bin", t2, 0), 0);
    stat("moved.bin", &st);
    check_int("utimensat mtime", st.st_mtim.tv_sec, 300);

    DIR *d = opendir("dir");
    check_int("opendir", d != NULL, 1);
    char *names[16];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 16) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof names[0], cmp);
    for (int i = 0; i < n; i++) printf("entry: %s\n", names[i]);
    check_int("entries", n, 5);

    check_int("unlink", unlink("dir/data.bin"), 0);
    check_int("unlink link", unlink("dir/link"), 0);
    check_int("rmdir sub", rmdir("dir/sub"), 0);
    check_int("rmdir", rmdir("dir"), 0);
    check_int("unlink moved", unlink("moved.bin"), 0);
    check_int("access gone", access("moved.bin", F_OK), -1);

    struct timespec ts;
    check_int("clock_gettime", clock_gettime(CLOCK_MONOTONIC, &ts), 0);
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 1000000};
    check_int("nanosleep", nanosleep(&nap, NULL), 0);
    struct timespec woke;
    clock_gettime(CLOCK_MONOTONIC, &woke);
    long slept = (woke.tv_sec - ts.tv_sec) * 1000000000L + (woke.tv_nsec - ts.tv_nsec);
    /* Also when the guest moves to another host right after the sleep. */
    check_int("slept at least 1 ms", slept >= 1000000, 1);
    check_int("sched_yield", sched_yield(), 0);
    unsigned char rnd[16];
    check_int("getentropy", getentropy(rnd, sizeof rnd), 0);

    printf("failed checks: %d\n", failed);
    fflush(stdout);
    return failed == 0 ? 0 : 1;
}

/* A file system that loses, at a power cut, every write not synced: preloaded into the
 * broker (LD_PRELOAD), it copies a file of the data directory (POWER_CUT_WATCH) into
 * POWER_CUT_SYNCED each time the file is synced, after the sync and before the caller
 * learns of it. After the broker is killed, those copies are the files as they were at
 * their last fsync or fdatasync: what a disk that honours syncs, and keeps nothing else,
 * holds after the power is cut. While the file POWER_CUT_SYNC_SECONDS_FILE holds a number,
 * each sync takes that many seconds longer, a slow disk: whoever answers before the sync
 * ends is caught by a kill then.
 * tests/test_power_cut.py builds and uses it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void wait_for_slow_disk(void)
{
    const char *path = getenv("POWER_CUT_SYNC_SECONDS_FILE");
    double seconds = 0;
    FILE *file;

    if (path == NULL || (file = fopen(path, "r")) == NULL)
        return;
    if (fscanf(file, "%lf", &seconds) == 1 && seconds > 0)
        usleep((useconds_t)(seconds * 1e6));
    fclose(file);
}

static void keep_synced_copy(int fd)
{
    const char *watched = getenv("POWER_CUT_WATCH");
    const char *synced = getenv("POWER_CUT_SYNCED");
    char link[64], path[PATH_MAX], copy[PATH_MAX], partial[PATH_MAX + 16], buffer[65536];
    struct stat status;
    size_t watched_length;
    ssize_t length, got;
    off_t offset = 0;
    int out;

    if (watched == NULL || synced == NULL)
        return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    length = readlink(link, path, sizeof path - 1);
    if (length < 0)
        return;
    path[length] = '\0';
    watched_length = strlen(watched);
    if (strncmp(path, watched, watched_length) != 0 || path[watched_length] != '/'
            || strchr(path + watched_length + 1, '/') != NULL
            || fstat(fd, &status) != 0 || !S_ISREG(status.st_mode))
        return;     /* not a file of the data directory: the directory itself, a log */
    snprintf(copy, sizeof copy, "%s/%s", synced, path + watched_length + 1);
    snprintf(partial, sizeof partial, "%s.partial", copy);
    /* Whole or not at all: a kill while copying leaves the previous sync's copy, and the
     * caller has not yet been told of this sync. */
    out = open(partial, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0)
        abort();
    while ((got = pread(fd, buffer, sizeof buffer, offset)) > 0) {
        if (write(out, buffer, got) != got)
            abort();
        offset += got;
    }
    if (got < 0 || close(out) != 0 || rename(partial, copy) != 0)
        abort();
}

/* The real `name` (fsync or fdatasync) of libc, as slow as the disk is told to be, and the
 * file's copy taken once it succeeded. */
static int sync_and_keep(int fd, const char *name)
{
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    int result;

    wait_for_slow_disk();
    result = real(fd);
    if (result == 0)
        keep_synced_copy(fd);
    return result;
}

int fsync(int fd)
{
    return sync_and_keep(fd, "fsync");
}

int fdatasync(int fd)
{
    return sync_and_keep(fd, "fdatasync");
}

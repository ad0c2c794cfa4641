/* In-VPS isolation probe: tries things a tenant must not be able to do and prints one line per
 * check, "ok <name>" when the attempt was refused, "FAIL <name>: <detail>" when it worked.
 * Built statically by the tests (gcc -static) and copied into the test template.
 * Usage: probe <host-disk-major> <host-disk-minor> <host-pid> */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static int failures;

static void refused(const char *name, int worked, int err) {
    if (worked) {
        printf("FAIL %s: succeeded\n", name);
        failures++;
    } else {
        printf("ok %s (%s)\n", name, strerror(err));
    }
}

static void expect_eperm(const char *name, long rc) {
    int err = errno;
    if (rc >= 0 || err != EPERM) {
        printf("FAIL %s: rc=%ld errno=%s (want EPERM)\n", name, rc, strerror(err));
        failures++;
    } else {
        printf("ok %s (EPERM)\n", name);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: probe MAJOR MINOR HOSTPID\n");
        return 2;
    }
    unsigned major_nr = atoi(argv[1]), minor_nr = atoi(argv[2]);
    pid_t host_pid = atoi(argv[3]);

    /* Host disk: mknod then open. */
    unlink("/tmp/probe-disk");
    int rc = mknod("/tmp/probe-disk", S_IFBLK | 0600, makedev(major_nr, minor_nr));
    int err = errno;
    int fd = -1;
    if (rc == 0) {
        fd = open("/tmp/probe-disk", O_RDONLY);
        err = errno;
        unlink("/tmp/probe-disk");
    }
    refused("mknod+open host disk", fd >= 0, err);
    if (fd >= 0) close(fd);

    fd = open("/proc/sysrq-trigger", O_WRONLY);
    err = errno;
    int wrote = fd >= 0 && write(fd, "h", 1) == 1;
    if (fd >= 0) { err = errno; close(fd); }
    refused("write /proc/sysrq-trigger", wrote, err);

    expect_eperm("init_module", syscall(SYS_init_module, NULL, 0, ""));
    expect_eperm("finit_module", syscall(SYS_finit_module, -1, "", 0));
    expect_eperm("delete_module", syscall(SYS_delete_module, "ext4", 0));
    expect_eperm("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    expect_eperm("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    expect_eperm("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -3));
    expect_eperm("request_key", syscall(SYS_request_key, "user", "probe", NULL, -3));
    {
        char handle_buf[128] = {0};
        struct file_handle *handle = (struct file_handle *)handle_buf;
        handle->handle_bytes = 8;
        handle->handle_type = 1;
        expect_eperm("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, handle, O_RDONLY));
    }
    {
        char params[120] = {0};
        expect_eperm("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    }
    expect_eperm("reboot CAD_ON", syscall(SYS_reboot, 0xfee1dead, 672274793, 0x89ABCDEF, NULL));

    /* /proc/kcore must not yield any bytes. */
    fd = open("/proc/kcore", O_RDONLY);
    err = errno;
    char buf[64];
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    if (fd >= 0) { err = errno; close(fd); }
    refused("read /proc/kcore", n > 0, err);

    /* cgroup v1 hierarchy: mount, then release_agent and own limits. */
    mkdir("/tmp/probe-cg", 0700);
    rc = mount("cgroup", "/tmp/probe-cg", "cgroup", 0, "memory");
    err = errno;
    if (rc != 0) {
        refused("mount cgroup v1", 0, err);
        printf("ok release_agent (no cgroup mount)\n");
        printf("ok own memory limit (no cgroup mount)\n");
    } else {
        printf("note mount cgroup v1 succeeded; checking files\n");
        fd = open("/tmp/probe-cg/release_agent", O_WRONLY);
        err = errno;
        wrote = fd >= 0 && write(fd, "/probe", 6) == 6;
        if (fd >= 0) { err = errno; close(fd); }
        refused("write release_agent", wrote, err);
        fd = open("/tmp/probe-cg/memory.limit_in_bytes", O_WRONLY);
        err = errno;
        wrote = fd >= 0 && write(fd, "-1", 2) == 2;
        if (fd >= 0) { err = errno; close(fd); }
        refused("write own memory.limit_in_bytes", wrote, err);
        umount("/tmp/probe-cg");
    }
    rmdir("/tmp/probe-cg");

    /* Setting the clock to the time it already shows: harmless even if it were allowed. */
    {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        expect_eperm("clock_settime", clock_settime(CLOCK_REALTIME, &now));
    }

    rc = kill(host_pid, 0);
    refused("signal host process", rc == 0, errno);

    fd = open("/proc/sys/kernel/hostname", O_WRONLY);
    err = errno;
    refused("open /proc/sys for writing", fd >= 0, err);
    if (fd >= 0) close(fd);

    rc = mkdir("/sys/kernel/probe", 0700);
    refused("write /sys", rc == 0, errno);

    printf("failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}

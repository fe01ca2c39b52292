/*
 * mailfilter-pipe: run a pipe(8) content filter so that every failure defers the message.
 *
 *   mailfilter-pipe [-t SECONDS] /ABSOLUTE/PATH/OF/FILTER [ARG...]
 *
 * pipe(8) bounces a message when its command exits with anything but 0, 75 (EX_TEMPFAIL) and the
 * few other <sysexits.h> codes it maps to a 4.x.x status. `mailfilter pipe` keeps that promise
 * itself, but only once Python runs its code: a missing or broken interpreter, a half-upgraded
 * package (ImportError) or a killed process exit 1 or die of a signal before it can. This wrapper
 * is the first thing pipe(8) runs; it needs nothing but libc, so it works when those are broken.
 *
 * It runs the filter with execv (no shell, no PATH search), with its own standard input (the
 * message, which the wrapper never reads), its environment and its working directory; the
 * filter's standard output and standard error go into a pipe that the wrapper reads (the first
 * 4 KiB are kept, pipe(8) keeps no more). Then:
 *   - the filter exited 0, 69 or 75: what it printed is written unchanged and the wrapper exits
 *     with the same status (69 is the explicit reject policy; 75 defers, unless its text starts
 *     with a non-4 status code, which pipe(8) would honour over the exit status: a failure);
 *   - anything else (another exit status, a signal, the filter cannot be run, no filter given,
 *     the -t time limit): one line, `4.3.0 mailfilter: filter failed (REASON), message deferred`,
 *     and exit 75. The filter's output is dropped: it could hold a traceback with message data,
 *     and a second status line could override the first.
 *
 * -t SECONDS: kill the filter (SIGKILL, the filter process) and defer after SECONDS. pipe(8)'s
 * own limit (command_time_limit, $mailfilter_time_limit) kills the whole process group with
 * SIGKILL, which nothing can catch, and BOUNCES the message (5.3.0 "Command time limit
 * exceeded"); a -t below it turns that bounce into a deferral. Keep it above [pipe] deadline, so
 * that the filter's own deadline, which stops before it delivers, normally comes first.
 *
 * Signals: pipe(8) sends none but that SIGKILL. SIGTERM, SIGINT and SIGHUP sent to the wrapper
 * (an admin, a service manager) are passed on to the filter, and the wrapper still answers from
 * the filter's exit status. SIGPIPE is ignored in the wrapper (pipe(8) may stop reading) and
 * restored for the filter, as is the signal mask.
 *
 * Build: cc -O2 -Wall -Wextra -Werror -o mailfilter-pipe mailfilter-pipe.c
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define EX_UNAVAILABLE 69
#define EX_TEMPFAIL 75
#define KEEP 4096            /* pipe(8) reads at most VSTREAM_BUFSIZE (4096) bytes of output */
#define MAX_SECONDS 86400

static volatile sig_atomic_t child_exited, timed_out, forward;

static void on_signal(int sig)
{
    if (sig == SIGCHLD)
        child_exited = 1;
    else if (sig == SIGALRM)
        timed_out = 1;
    else
        forward = sig;
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* pipe(8) stopped reading: nothing else to do, the exit status still counts */
        }
        buf += n;
        len -= (size_t) n;
    }
}

/* Print the one deferral line (REASON, then DETAIL if any, made printable) and exit 75. */
static void defer(const char *reason, const char *detail) __attribute__((noreturn));
static void defer(const char *reason, const char *detail)
{
    char line[512];
    int n = snprintf(line, sizeof line - 1, "4.3.0 mailfilter: filter failed (%s%s%s), message deferred",
                     reason, detail ? ": " : "", detail ? detail : "");
    size_t len = n < 0 ? 0 : (size_t) n < sizeof line - 1 ? (size_t) n : sizeof line - 2;
    for (size_t i = 0; i < len; i++)
        if (line[i] < 0x20 || line[i] > 0x7e)
            line[i] = '_'; /* one line, whatever a path holds */
    line[len++] = '\n';
    write_all(STDOUT_FILENO, line, len);
    _exit(EX_TEMPFAIL);
}

/* pipe(8) takes a status code at the start of the output over the exit status: 2.x.x or 5.x.x bounce. */
static int non_temporary_text(const char *buf, size_t len)
{
    return len >= 2 && buf[0] >= '0' && buf[0] <= '9' && buf[0] != '4' && buf[1] == '.';
}

static int parse_seconds(const char *text, unsigned *seconds)
{
    unsigned value = 0;
    if (!*text)
        return 0;
    for (; *text; text++) {
        if (*text < '0' || *text > '9' || value > MAX_SECONDS)
            return 0;
        value = value * 10 + (unsigned) (*text - '0');
    }
    *seconds = value;
    return value > 0 && value <= MAX_SECONDS;
}

/* Keep the first KEEP bytes of what one read of FD gives; return the new count; *EOF when nothing more comes. */
static size_t take(int fd, char *buf, size_t kept, int *eof)
{
    static char discard[4096];
    ssize_t n;
    do
        n = read(fd, kept < KEEP ? buf + kept : discard, kept < KEEP ? KEEP - kept : sizeof discard);
    while (n < 0 && errno == EINTR);
    if (n > 0 && kept < KEEP)
        kept += (size_t) n;
    if (n <= 0)
        *eof = 1; /* end of file, nothing more for now (O_NONBLOCK), or an error: stop reading */
    return kept;
}

int main(int argc, char **argv)
{
    static const int handled[] = {SIGCHLD, SIGALRM, SIGTERM, SIGINT, SIGHUP};
    static char out[KEEP];
    unsigned seconds = 0;
    int first = 1;

    for (int fd = 0; fd <= 2; fd++) /* so that no pipe below lands on 0, 1 or 2 */
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
            _exit(EX_TEMPFAIL);
    signal(SIGPIPE, SIG_IGN);

    if (argc > 1 && strcmp(argv[1], "-t") == 0) {
        if (argc < 3 || !parse_seconds(argv[2], &seconds))
            defer("mailfilter-pipe: -t wants 1 to 86400 seconds", argc < 3 ? NULL : argv[2]);
        first = 3;
    }
    if (first >= argc)
        defer("mailfilter-pipe: no filter command given", NULL);
    const char *path = argv[first];
    char reason[512];
    snprintf(reason, sizeof reason, "cannot run %s", path);
    if (path[0] != '/')
        defer(reason, "not an absolute path");

    /* The signals that matter arrive only inside ppoll/sigsuspend: no race between a check and a wait. */
    sigset_t block, waiting;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    action.sa_flags = SA_NOCLDSTOP;
    sigemptyset(&action.sa_mask);
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++) {
        sigaddset(&block, handled[i]);
        sigaction(handled[i], &action, NULL);
    }
    sigprocmask(SIG_BLOCK, &block, &waiting);
    sigset_t original = waiting;
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigdelset(&waiting, handled[i]);

    int output[2], failure[2];
    if (pipe2(output, O_CLOEXEC) < 0 || pipe2(failure, O_CLOEXEC) < 0)
        defer("cannot make a pipe", strerror(errno));
    if (seconds)
        alarm(seconds);
    pid_t pid = fork();
    if (pid < 0)
        defer("cannot fork", strerror(errno));
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, &original, NULL);
        if (dup2(output[1], STDOUT_FILENO) >= 0 && dup2(output[1], STDERR_FILENO) >= 0)
            execv(path, argv + first);
        int error = errno;
        write_all(failure[1], (const char *) &error, sizeof error);
        _exit(127);
    }
    close(output[1]);
    close(failure[1]);
    close(STDIN_FILENO); /* the message is the filter's alone: when it exits unread, pipe(8) gets EPIPE */

    /* Read until EOF, the filter's exit (what it left in the pipe is still taken), or the time limit. */
    size_t kept = 0;
    int eof = 0, killed = 0;
    while (!eof) {
        if (forward) {
            kill(pid, forward);
            forward = 0;
        }
        if (timed_out || child_exited)
            break;
        struct pollfd ready = {.fd = output[0], .events = POLLIN};
        if (ppoll(&ready, 1, NULL, &waiting) > 0)
            kept = take(output[0], out, kept, &eof);
        else if (errno != EINTR)
            break;
    }
    while (!child_exited) {
        if (forward) {
            kill(pid, forward);
            forward = 0;
        }
        if (timed_out && !killed) {
            kill(pid, SIGKILL);
            killed = 1;
        }
        sigsuspend(&waiting);
    }
    alarm(0);
    if (!eof && !killed) { /* the filter exited: all it wrote is in the pipe (unless its offspring still write) */
        fcntl(output[0], F_SETFL, O_NONBLOCK);
        for (int reads = 0; !eof && reads < 64; reads++) /* a pipe holds 64 KiB (16 reads); bounded all the same */
            kept = take(output[0], out, kept, &eof);
    }

    int status;
    pid_t waited;
    do
        waited = waitpid(pid, &status, 0);
    while (waited < 0 && errno == EINTR);
    if (waited < 0)
        defer("cannot wait for the filter", strerror(errno));

    int error;
    ssize_t n;
    do
        n = read(failure[0], &error, sizeof error);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t) sizeof error)
        defer(reason, strerror(error));

    if (killed) {
        snprintf(reason, sizeof reason, "no result within %u s, killed", seconds);
        defer(reason, NULL);
    }
    if (WIFEXITED(status)) {
        int code = WEXITSTATUS(status);
        if (code == 0 || code == EX_UNAVAILABLE || (code == EX_TEMPFAIL && !non_temporary_text(out, kept))) {
            write_all(STDOUT_FILENO, out, kept);
            return code;
        }
        snprintf(reason, sizeof reason, code == EX_TEMPFAIL ? "exit status %d with a non-4.x.x status text" : "exit status %d",
                 code);
    } else if (WIFSIGNALED(status)) {
        snprintf(reason, sizeof reason, "killed by signal %d", WTERMSIG(status));
    } else {
        snprintf(reason, sizeof reason, "wait status %#x", (unsigned) status);
    }
    defer(reason, NULL);
}

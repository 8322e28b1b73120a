/* Publishers that each wait for every confirm, for bench/durable.py --c-publishers.
 *
 * The AMQP connections are opened, their channel 1 put in confirm mode, by the Python
 * bench, which passes their descriptors here. This program only sends the publish frames
 * read from stdin and counts basic.ack frames, so a publisher costs a send and a read per
 * message and the broker, not the clients, decides the rate.
 *
 *     confirm_publishers COUNT WINDOW FD... < publish-frames
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BYTES (1 << 16)

struct publisher {
    int fd;
    long sent, confirmed;
    size_t held;
    unsigned char buffer[READ_BYTES];
};

static unsigned char frames[1 << 16];
static size_t frames_length;

static uint64_t big_endian(const unsigned char *bytes, int size)
{
    uint64_t value = 0;
    for (int i = 0; i < size; i++)
        value = value << 8 | bytes[i];
    return value;
}

static void send_all(int fd, const unsigned char *bytes, size_t length)
{
    while (length > 0) {
        ssize_t sent = send(fd, bytes, length, 0);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            perror("send");
            exit(1);
        }
        bytes += sent;
        length -= (size_t)sent;
    }
}

static void publish_more(struct publisher *publisher, long count, long window)
{
    long room = window - (publisher->sent - publisher->confirmed);
    if (room > count - publisher->sent)
        room = count - publisher->sent;
    for (; room > 0; room--, publisher->sent++)
        send_all(publisher->fd, frames, frames_length);
}

/* Reads what the broker sent; returns 1 once every message of `publisher` is confirmed. */
static int read_confirms(struct publisher *publisher, long count)
{
    ssize_t got = recv(publisher->fd, publisher->buffer + publisher->held, READ_BYTES - publisher->held, 0);
    if (got <= 0) {
        fprintf(stderr, "the broker closed a publisher's connection\n");
        exit(1);
    }
    publisher->held += (size_t)got;
    size_t offset = 0;
    while (publisher->held - offset >= 7) {
        const unsigned char *frame = publisher->buffer + offset;
        size_t size = big_endian(frame + 3, 4);
        if (publisher->held - offset < size + 8)
            break;
        if (frame[0] == 1 && size >= 12) {
            unsigned method = (unsigned)big_endian(frame + 7, 4);  /* class and method ids */
            if (method == (60u << 16 | 80))
                publisher->confirmed = (long)big_endian(frame + 11, 8);
            else if (method == (60u << 16 | 120)) {
                fprintf(stderr, "the broker nacked a message\n");
                exit(1);
            }
        }
        offset += size + 8;
    }
    memmove(publisher->buffer, publisher->buffer + offset, publisher->held - offset);
    publisher->held -= offset;
    return publisher->confirmed == count;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s COUNT WINDOW FD... < publish-frames\n", argv[0]);
        return 2;
    }
    long count = atol(argv[1]), window = atol(argv[2]);
    int publishers = argc - 3;
    frames_length = fread(frames, 1, sizeof frames, stdin);
    struct publisher *all = calloc((size_t)publishers, sizeof *all);
    int poll = epoll_create1(0);
    for (int i = 0; i < publishers; i++) {
        all[i].fd = atoi(argv[i + 3]);
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = &all[i]};
        epoll_ctl(poll, EPOLL_CTL_ADD, all[i].fd, &event);
        publish_more(&all[i], count, window);
    }
    int active = publishers;
    struct epoll_event events[64];
    while (active > 0) {
        int ready = epoll_wait(poll, events, 64, -1);
        if (ready < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < ready; i++) {
            struct publisher *publisher = events[i].data.ptr;
            if (read_confirms(publisher, count)) {
                epoll_ctl(poll, EPOLL_CTL_DEL, publisher->fd, NULL);
                active--;
            } else {
                publish_more(publisher, count, window);
            }
        }
    }
    return 0;
}

/* Unit tests for queue.c: the bounded FIFO between the event loop and one worker. Push never
 * blocks (a full queue is -EAGAIN at once, parexd's backpressure), a closed queue still hands out
 * what it holds (so a drain finishes the work), and the order is strictly first in, first out. */
#include "daemon/exec/queue.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#define MS 1000000ull

/* Items are small integers disguised as pointers; 0 is never used so NULL stays "none". */
#define ITEM(n) ((void *)(uintptr_t)(n))
#define NUM(p) ((uintptr_t)(p))

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void test_new_is_empty(void **state)
{
    px_queue_t *q = px_queue_new(4);

    assert_non_null(q);
    assert_int_equal(px_queue_capacity(q), 4);
    assert_int_equal(px_queue_depth(q), 0);
    px_queue_free(q);
    px_queue_free(NULL); /* a no-op, like free() */
}

static void test_fifo_order(void **state)
{
    px_queue_t *q = px_queue_new(8);
    void *it;

    for (uintptr_t i = 1; i <= 8; i++)
        assert_int_equal(px_queue_push(q, ITEM(i)), 0);
    assert_int_equal(px_queue_depth(q), 8);
    for (uintptr_t i = 1; i <= 8; i++) {
        assert_int_equal(px_queue_pop(q, &it, 0), 0);
        assert_int_equal(NUM(it), i);
    }
    assert_int_equal(px_queue_depth(q), 0);
    px_queue_free(q);
}

/* The ring wraps many times over; order must survive the wrap-around. */
static void test_fifo_order_across_wraparound(void **state)
{
    px_queue_t *q = px_queue_new(3);
    uintptr_t next_in = 1, next_out = 1;
    void *it;

    for (int round = 0; round < 100; round++) {
        int pushes = 1 + round % 3;
        for (int i = 0; i < pushes && px_queue_depth(q) < 3; i++)
            assert_int_equal(px_queue_push(q, ITEM(next_in++)), 0);
        assert_int_equal(px_queue_pop(q, &it, 0), 0);
        assert_int_equal(NUM(it), next_out++);
    }
    while (px_queue_pop(q, &it, 0) == 0)
        assert_int_equal(NUM(it), next_out++);
    assert_int_equal(next_out, next_in);
    px_queue_free(q);
}

static void test_full_is_eagain_at_once(void **state)
{
    px_queue_t *q = px_queue_new(2);
    uint64_t t0;
    void *it;

    assert_int_equal(px_queue_push(q, ITEM(1)), 0);
    assert_int_equal(px_queue_push(q, ITEM(2)), 0);
    t0 = now_ns();
    assert_int_equal(px_queue_push(q, ITEM(3)), -EAGAIN);
    assert_int_equal(px_queue_push(q, ITEM(3)), -EAGAIN);
    assert_true(now_ns() - t0 < 100 * MS); /* never waits for room */
    assert_int_equal(px_queue_depth(q), 2);

    /* The rejected item was not stored: after one pop there is room for exactly one more. */
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 1);
    assert_int_equal(px_queue_push(q, ITEM(4)), 0);
    assert_int_equal(px_queue_push(q, ITEM(5)), -EAGAIN);
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 2);
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 4);
    assert_int_equal(px_queue_pop(q, &it, 0), -ETIMEDOUT);
    px_queue_free(q);
}

static void test_capacity_one(void **state)
{
    px_queue_t *q = px_queue_new(1);
    void *it;

    assert_int_equal(px_queue_push(q, ITEM(7)), 0);
    assert_int_equal(px_queue_push(q, ITEM(8)), -EAGAIN);
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 7);
    assert_int_equal(px_queue_push(q, ITEM(9)), 0);
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 9);
    px_queue_free(q);
}

static void test_pop_timeout(void **state)
{
    px_queue_t *q = px_queue_new(2);
    void *it = ITEM(99);
    uint64_t t0, waited;

    t0 = now_ns();
    assert_int_equal(px_queue_pop(q, &it, 50 * MS), -ETIMEDOUT);
    waited = now_ns() - t0;
    assert_true(waited >= 45 * MS); /* it did wait (allowing for clock granularity) */
    assert_true(waited < 2000 * MS);
    assert_int_equal(NUM(it), 99); /* untouched on timeout */

    /* A zero timeout is a poll. */
    t0 = now_ns();
    assert_int_equal(px_queue_pop(q, &it, 0), -ETIMEDOUT);
    assert_true(now_ns() - t0 < 100 * MS);

    /* Timeouts of a second or more (the nanosecond carry). */
    assert_int_equal(px_queue_push(q, ITEM(1)), 0);
    assert_int_equal(px_queue_pop(q, &it, 1999999999ull), 0);
    assert_int_equal(NUM(it), 1);
    px_queue_free(q);
}

static void test_close_drains_then_epipe(void **state)
{
    px_queue_t *q = px_queue_new(4);
    void *it;

    assert_int_equal(px_queue_push(q, ITEM(1)), 0);
    assert_int_equal(px_queue_push(q, ITEM(2)), 0);
    px_queue_close(q);

    /* Closed: no more pushes, even with room. */
    assert_int_equal(px_queue_push(q, ITEM(3)), -EPIPE);
    /* But what it holds still comes out, in order... */
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 1);
    assert_int_equal(px_queue_pop(q, &it, 0), 0);
    assert_int_equal(NUM(it), 2);
    /* ...and only then does pop say the queue is finished, without waiting out the timeout. */
    uint64_t t0 = now_ns();
    assert_int_equal(px_queue_pop(q, &it, 5000 * MS), -EPIPE);
    assert_true(now_ns() - t0 < 1000 * MS);
    assert_int_equal(px_queue_pop(q, &it, 0), -EPIPE);
    px_queue_free(q);
}

static void test_close_full_queue_push_is_epipe(void **state)
{
    px_queue_t *q = px_queue_new(1);

    assert_int_equal(px_queue_push(q, ITEM(1)), 0);
    px_queue_close(q);
    /* Closed wins over full: the caller must learn it is shutting down, not to retry later. */
    assert_int_equal(px_queue_push(q, ITEM(2)), -EPIPE);
    px_queue_free(q);
}

static int match_num(void *item, void *arg)
{
    return NUM(item) == *(uintptr_t *)arg;
}

static void test_remove_if_keeps_order(void **state)
{
    px_queue_t *q = px_queue_new(6);
    uintptr_t want;
    void *it;

    for (uintptr_t i = 1; i <= 6; i++)
        assert_int_equal(px_queue_push(q, ITEM(i)), 0);

    want = 3;
    assert_ptr_equal(px_queue_remove_if(q, match_num, &want), ITEM(3));
    assert_int_equal(px_queue_depth(q), 5);
    want = 42;
    assert_null(px_queue_remove_if(q, match_num, &want));
    assert_int_equal(px_queue_depth(q), 5);
    want = 1; /* the head */
    assert_ptr_equal(px_queue_remove_if(q, match_num, &want), ITEM(1));
    want = 6; /* the tail */
    assert_ptr_equal(px_queue_remove_if(q, match_num, &want), ITEM(6));
    assert_int_equal(px_queue_depth(q), 3);

    /* Room again, and the new item lands behind the survivors. */
    assert_int_equal(px_queue_push(q, ITEM(7)), 0);
    {
        static const uintptr_t expect[] = {2, 4, 5, 7};
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(px_queue_pop(q, &it, 0), 0);
            assert_int_equal(NUM(it), expect[i]);
        }
    }
    assert_int_equal(px_queue_pop(q, &it, 0), -ETIMEDOUT);
    px_queue_free(q);
}

/* remove_if in a ring whose contents wrap past the end of the array. */
static void test_remove_if_wrapped(void **state)
{
    px_queue_t *q = px_queue_new(4);
    uintptr_t want = 5;
    void *it;

    for (uintptr_t i = 1; i <= 4; i++)
        assert_int_equal(px_queue_push(q, ITEM(i)), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(px_queue_pop(q, &it, 0), 0);
    for (uintptr_t i = 5; i <= 7; i++) /* 4 at the end of the array, 5..7 wrapped */
        assert_int_equal(px_queue_push(q, ITEM(i)), 0);
    assert_ptr_equal(px_queue_remove_if(q, match_num, &want), ITEM(5));
    {
        static const uintptr_t expect[] = {4, 6, 7};
        for (size_t i = 0; i < 3; i++) {
            assert_int_equal(px_queue_pop(q, &it, 0), 0);
            assert_int_equal(NUM(it), expect[i]);
        }
    }
    px_queue_free(q);
}

static void test_take_all(void **state)
{
    px_queue_t *q = px_queue_new(5);
    void *out[8];
    void *it;

    assert_int_equal(px_queue_take_all(q, out, 8), 0);
    for (uintptr_t i = 1; i <= 5; i++)
        assert_int_equal(px_queue_push(q, ITEM(i)), 0);

    /* At most max, in FIFO order, and the rest stays queued. */
    assert_int_equal(px_queue_take_all(q, out, 2), 2);
    assert_int_equal(NUM(out[0]), 1);
    assert_int_equal(NUM(out[1]), 2);
    assert_int_equal(px_queue_depth(q), 3);

    assert_int_equal(px_queue_take_all(q, out, 8), 3);
    assert_int_equal(NUM(out[0]), 3);
    assert_int_equal(NUM(out[1]), 4);
    assert_int_equal(NUM(out[2]), 5);
    assert_int_equal(px_queue_depth(q), 0);
    assert_int_equal(px_queue_pop(q, &it, 0), -ETIMEDOUT);

    /* Works on a closed queue too (the forced stop takes everything after close). */
    assert_int_equal(px_queue_push(q, ITEM(6)), 0);
    px_queue_close(q);
    assert_int_equal(px_queue_take_all(q, out, 8), 1);
    assert_int_equal(NUM(out[0]), 6);
    assert_int_equal(px_queue_pop(q, &it, 0), -EPIPE);
    px_queue_free(q);
}

/* A consumer blocked in pop wakes for a push and for a close. */
struct waiter {
    px_queue_t *q;
    int rc;
    void *item;
};

static void *wait_one(void *arg)
{
    struct waiter *w = arg;

    w->rc = px_queue_pop(w->q, &w->item, 10000 * MS);
    return NULL;
}

static void test_blocked_pop_wakes_on_push_and_close(void **state)
{
    px_queue_t *q = px_queue_new(2);
    struct waiter w = {.q = q};
    pthread_t t;
    uint64_t t0 = now_ns();

    assert_int_equal(pthread_create(&t, NULL, wait_one, &w), 0);
    assert_int_equal(px_queue_push(q, ITEM(11)), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w.rc, 0);
    assert_int_equal(NUM(w.item), 11);

    assert_int_equal(pthread_create(&t, NULL, wait_one, &w), 0);
    px_queue_close(q);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w.rc, -EPIPE);
    /* Neither wait ran into the 10 s timeout. */
    assert_true(now_ns() - t0 < 5000 * MS);
    px_queue_free(q);
}

/* One producer, one consumer, many items through a small queue: every item arrives exactly once
 * and in order. The producer retries on -EAGAIN, which it sees often with capacity 8. */
#define PC_ITEMS 50000u

struct consumer {
    px_queue_t *q;
    uintptr_t received, out_of_order, last;
};

static void *consume(void *arg)
{
    struct consumer *c = arg;
    void *it;
    int rc;

    while ((rc = px_queue_pop(c->q, &it, 100 * MS)) != -EPIPE) {
        if (rc == -ETIMEDOUT)
            continue;
        if (NUM(it) != c->last + 1)
            c->out_of_order++;
        c->last = NUM(it);
        c->received++;
    }
    return NULL;
}

static void test_threaded_producer_consumer(void **state)
{
    px_queue_t *q = px_queue_new(8);
    struct consumer c = {.q = q};
    unsigned long full = 0;
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, consume, &c), 0);
    for (uintptr_t i = 1; i <= PC_ITEMS; i++) {
        int rc;
        while ((rc = px_queue_push(q, ITEM(i))) == -EAGAIN) {
            full++;
            sched_yield(); /* let the consumer make room rather than spin on a shared core */
        }
        assert_int_equal(rc, 0);
    }
    px_queue_close(q);
    assert_int_equal(pthread_join(t, NULL), 0);

    assert_int_equal(c.received, PC_ITEMS);
    assert_int_equal(c.out_of_order, 0);
    assert_int_equal(c.last, PC_ITEMS);
    assert_int_equal(px_queue_depth(q), 0);
    (void)full; /* how often the producer saw a full queue depends on scheduling */
    px_queue_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_is_empty),
        cmocka_unit_test(test_fifo_order),
        cmocka_unit_test(test_fifo_order_across_wraparound),
        cmocka_unit_test(test_full_is_eagain_at_once),
        cmocka_unit_test(test_capacity_one),
        cmocka_unit_test(test_pop_timeout),
        cmocka_unit_test(test_close_drains_then_epipe),
        cmocka_unit_test(test_close_full_queue_push_is_epipe),
        cmocka_unit_test(test_remove_if_keeps_order),
        cmocka_unit_test(test_remove_if_wrapped),
        cmocka_unit_test(test_take_all),
        cmocka_unit_test(test_blocked_pop_wakes_on_push_and_close),
        cmocka_unit_test(test_threaded_producer_consumer),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

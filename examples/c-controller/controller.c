/* A minimal motor controller for the vla-edge action stream, written from docs/wire.md (wire v1/v2).
 *
 *   controller CMD_ENDPOINT STATE_ENDPOINT SECONDS DIM LOW HIGH MAX_DELTA INITIAL [KEYS_DIR]
 *
 * Without KEYS_DIR: plain TCP (the daemon allows that on loopback only). With KEYS_DIR: CURVE (docs/wire.md
 * section 2) with this controller's keypair from KEYS_DIR/client.key_secret and the daemon's public key from
 * KEYS_DIR/server.key, the ZeroMQ certificate files `vla-edge keys generate` writes. The "motors" are perfect: actual = the last actuated command. Every
 * rule of docs/wire.md section 6 is here: one pending command, newest sequence number wins, the deadline mapped
 * with the clock offset on the safe side of its uncertainty (section 5), never early, the controller's own
 * limits, hold on stale, a state report every tick (version 2: applied, seq_rejected). Prints its counters as
 * one line "counters k=v ..." at exit. Not a safety system: keep the robot's own e-stop.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define MAX_DIM 64
#define TICK_NS 10000000LL /* the control loop runs at 100 Hz */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- decoding: one msgpack map into the fields any message may have ---- */
typedef struct {
    char kind[16];
    int64_t v, session, instance, seq, t_sent, t_due, deadline, echo_t, echo_recv, action_dim;
    double heartbeat_ms, stale_after_ms, command_ttl_ms;
    double values[MAX_DIM];
    int n_values, ready, has_session;
    char reason[80];
} msg_t;

static int as_i64(const msgpack_object *o, int64_t *out) {
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) { *out = (int64_t)o->via.u64; return 1; }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *out = o->via.i64; return 1; }
    return 0;
}
static int as_f64(const msgpack_object *o, double *out) {
    int64_t i;
    if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) { *out = o->via.f64; return 1; }
    if (as_i64(o, &i)) { *out = (double)i; return 1; }
    return 0;
}
static int key_is(const msgpack_object *k, const char *name) {
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(name) &&
           memcmp(k->via.str.ptr, name, k->via.str.size) == 0;
}

static int decode(const char *data, size_t size, msg_t *m) {
    msgpack_unpacked up;
    int ok = 0;
    memset(m, 0, sizeof *m);
    msgpack_unpacked_init(&up);
    if (size <= 16384 && msgpack_unpack_next(&up, data, size, NULL) == MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP) {
        ok = 1;
        for (uint32_t i = 0; i < up.data.via.map.size && ok; i++) {
            const msgpack_object *k = &up.data.via.map.ptr[i].key, *val = &up.data.via.map.ptr[i].val;
            if (key_is(k, "kind") && val->type == MSGPACK_OBJECT_STR && val->via.str.size < sizeof m->kind)
                memcpy(m->kind, val->via.str.ptr, val->via.str.size);
            else if (key_is(k, "reason") && val->type == MSGPACK_OBJECT_STR && val->via.str.size < sizeof m->reason)
                memcpy(m->reason, val->via.str.ptr, val->via.str.size);
            else if (key_is(k, "values") && val->type == MSGPACK_OBJECT_ARRAY && val->via.array.size <= MAX_DIM) {
                m->n_values = (int)val->via.array.size;
                for (int j = 0; j < m->n_values && ok; j++) ok = as_f64(&val->via.array.ptr[j], &m->values[j]);
            } else if (key_is(k, "ready") && val->type == MSGPACK_OBJECT_BOOLEAN) m->ready = val->via.boolean;
            else if (key_is(k, "v")) ok = as_i64(val, &m->v);
            else if (key_is(k, "session")) { ok = as_i64(val, &m->session); m->has_session = 1; }
            else if (key_is(k, "instance")) ok = as_i64(val, &m->instance);
            else if (key_is(k, "seq")) ok = as_i64(val, &m->seq);
            else if (key_is(k, "t_sent_ns")) ok = as_i64(val, &m->t_sent);
            else if (key_is(k, "t_due_ns")) ok = as_i64(val, &m->t_due);
            else if (key_is(k, "deadline_ns")) ok = as_i64(val, &m->deadline);
            else if (key_is(k, "echo_t_ns")) ok = as_i64(val, &m->echo_t);
            else if (key_is(k, "echo_recv_ns")) ok = as_i64(val, &m->echo_recv);
            else if (key_is(k, "action_dim")) ok = as_i64(val, &m->action_dim);
            else if (key_is(k, "heartbeat_ms")) ok = as_f64(val, &m->heartbeat_ms);
            else if (key_is(k, "stale_after_ms")) ok = as_f64(val, &m->stale_after_ms);
            else if (key_is(k, "command_ttl_ms")) ok = as_f64(val, &m->command_ttl_ms);
        }
        ok = ok && (m->v == 1 || m->v == 2) && m->kind[0];
    }
    msgpack_unpacked_destroy(&up);
    return ok;
}

/* ---- encoding helpers ---- */
static void pk_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}
static void pk_kv_i(msgpack_packer *pk, const char *k, int64_t v) { pk_str(pk, k); msgpack_pack_int64(pk, v); }
static void pk_kv_s(msgpack_packer *pk, const char *k, const char *v) { pk_str(pk, k); pk_str(pk, v); }

/* ---- the controller ---- */
typedef struct {
    void *sub, *dealer;
    int dim;
    double low, high, max_delta, position[MAX_DIM];
    int64_t instance, session, highest_seq, seq_applied, seq_rejected, last_daemon, heartbeat_ns, stale_ns;
    int has_session, ready, has_pending;
    msg_t pending;
    int64_t pending_due, pending_deadline;
    char rejected_reason[24], hold_reason[96];
    int holding;
    int64_t peer_hb_t, peer_hb_recv;
    int64_t best_rtt, offset; /* clock: the sample with the shortest round trip (of all, for brevity) */
    int64_t best_taken;
    long executed, rejected_late, rejected_over_velocity, rejected_out_of_limits, rejected_non_finite,
        rejected_stale, rejected_wrong_dim, rejected_duplicate, rejected_wrong_session, superseded, sessions, ticks;
} ctl_t;

static void send_buffer(void *sock, msgpack_sbuffer *sb) { zmq_send(sock, sb->data, sb->size, ZMQ_DONTWAIT); }

static void clock_sample(ctl_t *c, int64_t t1, int64_t t2, int64_t t3, int64_t t4) {
    int64_t rtt = (t4 - t1) - (t3 - t2);
    if (rtt < 0 || t4 < t1) return;
    if (c->best_rtt < 0 || rtt <= c->best_rtt) {
        c->best_rtt = rtt;
        c->offset = ((t2 - t1) + (t3 - t4)) / 2;
        c->best_taken = t4;
    }
}
static int64_t uncertainty(const ctl_t *c, int64_t now) {
    return (c->best_rtt + 1) / 2 + (now - c->best_taken) * 200 / 1000000; /* + 200 ppm drift */
}

static void refuse(ctl_t *c, int64_t seq, const char *why, long *counter) {
    (*counter)++;
    if (seq > c->seq_rejected) {
        c->seq_rejected = seq;
        snprintf(c->rejected_reason, sizeof c->rejected_reason, "%s", why);
    }
}

static void send_hello_or_heartbeat(ctl_t *c, int64_t now) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (!c->has_session) {
        msgpack_pack_map(&pk, 5);
        pk_kv_i(&pk, "v", 2);
        pk_kv_s(&pk, "kind", "hello");
        pk_kv_i(&pk, "instance", c->instance);
        pk_kv_i(&pk, "action_dim", c->dim);
        pk_kv_i(&pk, "t_sent_ns", now);
    } else {
        msgpack_pack_map(&pk, 8);
        pk_kv_i(&pk, "v", 1);
        pk_kv_s(&pk, "kind", "heartbeat");
        pk_kv_i(&pk, "session", c->session);
        pk_kv_i(&pk, "instance", c->instance);
        pk_str(&pk, "ready");
        if (c->ready) msgpack_pack_true(&pk); else msgpack_pack_false(&pk);
        pk_kv_i(&pk, "t_sent_ns", now);
        pk_kv_i(&pk, "echo_t_ns", c->peer_hb_t);
        pk_kv_i(&pk, "echo_recv_ns", c->peer_hb_recv);
    }
    send_buffer(c->dealer, &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void send_ready(ctl_t *c, int64_t now) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pk_kv_i(&pk, "v", 1);
    pk_kv_s(&pk, "kind", "ready");
    pk_kv_i(&pk, "session", c->session);
    pk_kv_i(&pk, "instance", c->instance);
    pk_kv_i(&pk, "t_sent_ns", now);
    send_buffer(c->dealer, &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void send_state(ctl_t *c, int64_t now) {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    if (!c->has_session) return;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 13);
    pk_kv_i(&pk, "v", 2);
    pk_kv_s(&pk, "kind", "state");
    pk_kv_i(&pk, "session", c->session);
    pk_kv_i(&pk, "instance", c->instance);
    pk_kv_i(&pk, "t_sent_ns", now);
    pk_kv_i(&pk, "seq_applied", c->seq_applied);
    pk_str(&pk, "actual"); /* exactly action_dim values: a perfect motor is where it was commanded */
    msgpack_pack_array(&pk, c->dim);
    for (int i = 0; i < c->dim; i++) msgpack_pack_double(&pk, c->position[i]);
    pk_str(&pk, "holding");
    if (c->holding) msgpack_pack_true(&pk); else msgpack_pack_false(&pk);
    pk_kv_s(&pk, "hold_reason", c->hold_reason);
    pk_str(&pk, "counters");
    msgpack_pack_map(&pk, 4);
    pk_kv_i(&pk, "executed", c->executed);
    pk_kv_i(&pk, "rejected_late", c->rejected_late);
    pk_kv_i(&pk, "rejected_over_velocity", c->rejected_over_velocity);
    pk_kv_i(&pk, "ticks", c->ticks);
    pk_str(&pk, "applied");
    msgpack_pack_array(&pk, c->seq_applied >= 0 ? c->dim : 0);
    for (int i = 0; c->seq_applied >= 0 && i < c->dim; i++) msgpack_pack_double(&pk, c->position[i]);
    pk_kv_i(&pk, "seq_rejected", c->seq_rejected);
    pk_kv_s(&pk, "rejected_reason", c->rejected_reason);
    send_buffer(c->dealer, &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void on_session(ctl_t *c, const msg_t *m, int64_t now) {
    if (strcmp(m->kind, "welcome") == 0 && m->instance == c->instance) {
        if (m->action_dim != c->dim) return; /* not ours to accept: no session */
        if (m->v == 2 && m->heartbeat_ms > 0 && m->stale_after_ms > 0) { /* the daemon's timing is the one to use */
            c->heartbeat_ns = (int64_t)(m->heartbeat_ms * 1e6);
            c->stale_ns = (int64_t)(m->stale_after_ms * 1e6);
        }
        if (!c->has_session || m->session != c->session) {
            c->session = m->session;
            c->has_session = 1;
            c->ready = 0;
            c->has_pending = 0;
            c->highest_seq = c->seq_applied = c->seq_rejected = -1;
            c->sessions++;
        }
        c->last_daemon = now;
        clock_sample(c, m->echo_t, m->echo_recv, m->t_sent, now);
    } else if (strcmp(m->kind, "heartbeat") == 0 && m->instance == c->instance) {
        if (!c->has_session || m->session != c->session) { c->has_session = 0; c->ready = 0; return; }
        c->last_daemon = now;
        c->peer_hb_t = m->t_sent;
        c->peer_hb_recv = now;
        if (m->echo_t) clock_sample(c, m->echo_t, m->echo_recv, m->t_sent, now);
        if (c->ready && !m->ready) send_ready(c, now);
    }
}

static void on_command(ctl_t *c, const msg_t *m, int64_t now) {
    int is_action = strcmp(m->kind, "action") == 0;
    if (!is_action && strcmp(m->kind, "hold") != 0) return;
    if (!c->has_session || !m->has_session || m->session != c->session) { c->rejected_wrong_session++; return; }
    if (!c->ready) { /* any message of our session proves the subscription: the handshake completes */
        c->ready = 1;
        c->last_daemon = now;
        if (m->seq > c->highest_seq) c->highest_seq = m->seq;
        send_ready(c, now);
        return;
    }
    if (m->seq <= c->highest_seq) { c->rejected_duplicate++; return; }
    c->highest_seq = m->seq;
    c->last_daemon = now;
    if (is_action && m->n_values != c->dim) { refuse(c, m->seq, "wrong_dim", &c->rejected_wrong_dim); return; }
    int64_t slack = uncertainty(c, now);
    int64_t due = m->t_due - c->offset + slack, deadline = m->deadline - c->offset - slack;
    if (is_action && now > deadline) { refuse(c, m->seq, "late", &c->rejected_late); return; }
    if (c->has_pending && strcmp(c->pending.kind, "action") == 0) c->superseded++;
    c->pending = *m;
    c->pending_due = due;
    c->pending_deadline = deadline;
    c->has_pending = 1;
}

static void tick(ctl_t *c, int64_t now) {
    c->ticks++;
    c->holding = 1;
    if (!c->ready) { strcpy(c->hold_reason, "handshake"); return; }
    if (now - c->last_daemon > c->stale_ns) {
        if (c->has_pending && strcmp(c->pending.kind, "action") == 0)
            refuse(c, c->pending.seq, "stale", &c->rejected_stale);
        c->has_pending = 0;
        strcpy(c->hold_reason, "stale");
        return;
    }
    if (!c->has_pending) { if (strncmp(c->hold_reason, "daemon:", 7) != 0) strcpy(c->hold_reason, "idle"); return; }
    if (strcmp(c->pending.kind, "hold") == 0) {
        snprintf(c->hold_reason, sizeof c->hold_reason, "daemon:%s", c->pending.reason);
        c->has_pending = 0;
        return;
    }
    if (now < c->pending_due) { strcpy(c->hold_reason, "waiting"); return; }
    c->has_pending = 0;
    if (now > c->pending_deadline) { refuse(c, c->pending.seq, "late", &c->rejected_late); strcpy(c->hold_reason, "late"); return; }
    for (int i = 0; i < c->dim; i++) {
        double x = c->pending.values[i];
        if (x != x || x > 1e308 || x < -1e308) { refuse(c, c->pending.seq, "non_finite", &c->rejected_non_finite); strcpy(c->hold_reason, "non_finite"); return; }
        if (x < c->low || x > c->high) { refuse(c, c->pending.seq, "out_of_limits", &c->rejected_out_of_limits); strcpy(c->hold_reason, "out_of_limits"); return; }
        if (x - c->position[i] > c->max_delta || c->position[i] - x > c->max_delta) {
            refuse(c, c->pending.seq, "over_velocity", &c->rejected_over_velocity);
            strcpy(c->hold_reason, "over_velocity");
            return;
        }
    }
    memcpy(c->position, c->pending.values, sizeof(double) * (size_t)c->dim); /* "the motors" */
    c->seq_applied = c->pending.seq;
    c->executed++;
    c->holding = 0;
    c->hold_reason[0] = 0;
}

/* ---- CURVE keys: the Z85 value of a `public-key = "..."` / `secret-key = "..."` line of a certificate file ---- */
static int read_key(const char *dir, const char *file, const char *field, char out[41]) {
    char path[4096], line[512], pattern[32];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "error: cannot read %s\n", path); return 0; }
    snprintf(pattern, sizeof pattern, "%s = \"%%40[^\"]\"", field);
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        found = sscanf(p, pattern, out) == 1 && strlen(out) == 40;
    }
    fclose(f);
    if (!found) fprintf(stderr, "error: %s has no %s (a ZeroMQ certificate file is expected)\n", path, field);
    return found;
}

static int use_curve(void *sock, const char *server_public, const char *public_key, const char *secret_key) {
    return zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public, 40) == 0 &&
           zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public_key, 40) == 0 &&
           zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_key, 40) == 0;
}

int main(int argc, char **argv) {
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: %s CMD_ENDPOINT STATE_ENDPOINT SECONDS DIM LOW HIGH MAX_DELTA INITIAL [KEYS_DIR]\n",
                argv[0]);
        return 2;
    }
    char server_public[41] = {0}, public_key[41] = {0}, secret_key[41] = {0};
    if (argc == 10 && !(read_key(argv[9], "server.key", "public-key", server_public) &&
                        read_key(argv[9], "client.key_secret", "public-key", public_key) &&
                        read_key(argv[9], "client.key_secret", "secret-key", secret_key)))
        return 2;
    ctl_t c;
    memset(&c, 0, sizeof c);
    c.dim = atoi(argv[4]);
    if (c.dim < 1 || c.dim > MAX_DIM) { fprintf(stderr, "error: DIM must be 1..64\n"); return 2; }
    c.low = atof(argv[5]);
    c.high = atof(argv[6]);
    c.max_delta = atof(argv[7]);
    for (int i = 0; i < c.dim; i++) c.position[i] = atof(argv[8]);
    c.instance = (now_ns() ^ ((int64_t)rand() << 20)) & 0x7fffffffffffffffLL;
    c.highest_seq = c.seq_applied = c.seq_rejected = -1;
    c.best_rtt = -1;
    c.heartbeat_ns = 100000000LL; /* until the welcome says otherwise */
    c.stale_ns = 300000000LL;
    int64_t end = now_ns() + (int64_t)(atof(argv[3]) * 1e9);

    void *ctx = zmq_ctx_new();
    int one = 1, zero = 0;
    c.sub = zmq_socket(ctx, ZMQ_SUB);
    zmq_setsockopt(c.sub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c.sub, ZMQ_CONFLATE, &one, sizeof one); /* backlog <= 1: never a stale queue */
    zmq_setsockopt(c.sub, ZMQ_SUBSCRIBE, "", 0);
    c.dealer = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(c.dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c.dealer, ZMQ_IMMEDIATE, &one, sizeof one);
    if (argc == 10 && !(use_curve(c.sub, server_public, public_key, secret_key) &&
                        use_curve(c.dealer, server_public, public_key, secret_key))) {
        fprintf(stderr, "error: this libzmq has no CURVE: %s\n", zmq_strerror(zmq_errno()));
        return 2;
    }
    if (zmq_connect(c.sub, argv[1]) != 0 || zmq_connect(c.dealer, argv[2]) != 0) {
        fprintf(stderr, "error: cannot connect: %s\n", zmq_strerror(zmq_errno()));
        return 2;
    }
    int64_t next_tick = now_ns(), next_beat = now_ns();
    char buf[16385];
    msg_t m;
    while (now_ns() < end) {
        zmq_pollitem_t items[] = {{c.sub, 0, ZMQ_POLLIN, 0}, {c.dealer, 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, 2, 1);
        for (int s = 0; s < 2; s++) {
            int n;
            while ((n = zmq_recv(s ? c.dealer : c.sub, buf, sizeof buf, ZMQ_DONTWAIT)) >= 0) {
                if (n > 16384 || !decode(buf, (size_t)n, &m)) continue; /* counted by a fuller controller */
                if (s) on_session(&c, &m, now_ns()); else on_command(&c, &m, now_ns());
            }
        }
        int64_t now = now_ns();
        if (now >= next_beat) { send_hello_or_heartbeat(&c, now); next_beat = now + c.heartbeat_ns; }
        if (now >= next_tick) { tick(&c, now); send_state(&c, now); next_tick += TICK_NS; }
    }
    printf("counters executed=%ld rejected_late=%ld rejected_over_velocity=%ld rejected_out_of_limits=%ld "
           "rejected_non_finite=%ld rejected_stale=%ld rejected_wrong_dim=%ld rejected_duplicate=%ld "
           "rejected_wrong_session=%ld superseded=%ld sessions=%ld ticks=%ld seq_applied=%lld\n",
           c.executed, c.rejected_late, c.rejected_over_velocity, c.rejected_out_of_limits, c.rejected_non_finite,
           c.rejected_stale, c.rejected_wrong_dim, c.rejected_duplicate, c.rejected_wrong_session, c.superseded,
           c.sessions, c.ticks, (long long)c.seq_applied);
    zmq_close(c.sub);
    zmq_close(c.dealer);
    zmq_ctx_term(ctx);
    return 0;
}

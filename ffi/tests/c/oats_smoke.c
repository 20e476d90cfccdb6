/* A C caller of liboats, driven by ffi/tests/it/c_abi.rs:
 *
 *   oats_smoke classify DIR IMAGES.f32 N LAMBDA WIDTH   top-1 class of each image
 *   oats_smoke memory DIR IMAGES.f32 N FILE...          the same, opened from memory
 *   oats_smoke errors DIR IMAGES.f32 N                  bad input gets the right status
 *   oats_smoke threads DIR IMAGES.f32 N                 4 inferring threads, 1 switching
 *   oats_smoke exits DIR IMAGES.f32 N ID T0 T1          side exits: MACs, thresholds, routing
 *
 * IMAGES.f32 holds N images (C×H×W floats each, native byte order). Any failed expectation
 * prints "FAIL: ..." and exits 1; valgrind runs the same program. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oats.h"

static void fail(const char *what, OatsStatus st) {
  size_t need = oats_last_error(NULL, 0);
  char *msg = malloc(need > 0 ? need : 1);
  if (msg == NULL) {
    fprintf(stderr, "FAIL: %s (status %d)\n", what, (int)st);
    exit(1);
  }
  msg[0] = '\0';
  oats_last_error(msg, need);
  fprintf(stderr, "FAIL: %s (status %d): %s\n", what, (int)st, msg);
  free(msg);
  exit(1);
}

#define CHECK(call)                                                                  \
  do {                                                                               \
    OatsStatus st_ = (call);                                                         \
    if (st_ != OATS_STATUS_OK) fail(#call, st_);                                     \
  } while (0)

/* The call must fail with `want` and leave a message that mentions `needle`. */
static void expect(const char *what, OatsStatus got, OatsStatus want, const char *needle) {
  char msg[2048];
  if (got != want) {
    size_t n = oats_last_error(msg, sizeof msg);
    fprintf(stderr, "FAIL: %s: status %d, expected %d (%s)\n", what, (int)got, (int)want,
            n ? msg : "no message");
    exit(1);
  }
  size_t n = oats_last_error(msg, sizeof msg);
  if (n == 0 || (needle != NULL && strstr(msg, needle) == NULL)) {
    fprintf(stderr, "FAIL: %s: message lacks \"%s\": %s\n", what, needle ? needle : "",
            n ? msg : "(none)");
    exit(1);
  }
  printf("ok %s: %s\n", what, msg);
}

static float *read_images(const char *path, size_t count) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "FAIL: cannot open %s\n", path);
    exit(1);
  }
  float *x = malloc(count * sizeof *x);
  if (x == NULL || fread(x, sizeof *x, count, f) != count) {
    fprintf(stderr, "FAIL: cannot read %zu floats from %s\n", count, path);
    exit(1);
  }
  fclose(f);
  return x;
}

static size_t argmax(const float *row, size_t k) {
  size_t best = 0;
  for (size_t j = 1; j < k; j++)
    if (row[j] > row[best]) best = j;
  return best;
}

typedef struct {
  OatsModel *model;
  size_t dims[3], classes, n;
  float *images;
} Ctx;

static Ctx open_ctx(OatsModel *model, const char *images, const char *n) {
  Ctx c = {.model = model, .n = strtoul(n, NULL, 10)};
  CHECK(oats_shape(model, c.dims, &c.classes));
  c.images = read_images(images, c.n * c.dims[0] * c.dims[1] * c.dims[2]);
  return c;
}

static void print_top1(Ctx *c) {
  size_t need = 0;
  OatsConfig served;
  float *logits = malloc(c->n * c->classes * sizeof *logits);
  CHECK(oats_infer(c->model, c->images, c->n, c->dims[0], c->dims[1], c->dims[2], logits,
                   c->n * c->classes, &need, &served));
  printf("served lambda %g width %g derived %d\n", served.lambda, served.width,
         (int)served.derived);
  for (size_t i = 0; i < c->n; i++)
    printf("image %zu class %zu\n", i, argmax(logits + i * c->classes, c->classes));
  free(logits);
}

static int classify(char **argv) {
  OatsModel *model = NULL;
  OatsOptions o = oats_options_default();
  CHECK(oats_open(argv[2], &o, &model));
  Ctx c = open_ctx(model, argv[3], argv[4]);
  OatsConfig served;
  CHECK(oats_select(model, atof(argv[5]), atof(argv[6]), &served));
  print_top1(&c);
  free(c.images);
  oats_close(model);
  return 0;
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(size > 0 ? (size_t)size : 1);
  *len = fread(b, 1, (size_t)size, f);
  fclose(f);
  return b;
}

static int memory(int argc, char **argv) {
  size_t count = (size_t)(argc - 5);
  OatsFile *files = calloc(count, sizeof *files);
  unsigned char **bufs = calloc(count, sizeof *bufs);
  char path[4096];
  for (size_t i = 0; i < count; i++) {
    snprintf(path, sizeof path, "%s/%s", argv[2], argv[5 + i]);
    bufs[i] = slurp(path, &files[i].len);
    if (bufs[i] == NULL) {
      fprintf(stderr, "FAIL: cannot read %s\n", path);
      return 1;
    }
    files[i].name = argv[5 + i];
    files[i].data = bufs[i];
  }
  OatsModel *model = NULL;
  CHECK(oats_open_from_memory(files, count, NULL, &model));
  /* The bytes were copied: the caller's buffers can go now. */
  for (size_t i = 0; i < count; i++) free(bufs[i]);
  free(bufs);
  free(files);
  Ctx c = open_ctx(model, argv[3], argv[4]);
  print_top1(&c);
  free(c.images);
  oats_close(model);
  return 0;
}

static int errors(char **argv) {
  OatsModel *model = NULL;
  char buf[64];
  float logits[64];
  size_t need = 0;
  OatsConfig served;

  if (oats_abi_version() != OATS_ABI_VERSION) {
    fprintf(stderr, "FAIL: ABI %u, header %d\n", oats_abi_version(), OATS_ABI_VERSION);
    return 1;
  }
  oats_close(NULL); /* accepted */
  expect("open NULL dir", oats_open(NULL, NULL, &model), OATS_STATUS_NULL_POINTER, "dir");
  if (model != NULL) {
    fprintf(stderr, "FAIL: a failed open left a handle\n");
    return 1;
  }
  expect("open NULL out", oats_open(argv[2], NULL, NULL), OATS_STATUS_NULL_POINTER, "out");
  expect("open missing dir", oats_open("/nonexistent/oats", NULL, &model), OATS_STATUS_IO,
         "nonexistent");
  OatsOptions bad = oats_options_default();
  bad.backend = 7;
  expect("open unknown backend", oats_open(argv[2], &bad, &model),
         OATS_STATUS_INVALID_ARGUMENT, "backend 7");

  CHECK(oats_open(argv[2], NULL, &model));
  Ctx c = open_ctx(model, argv[3], argv[4]);
  size_t per = c.dims[0] * c.dims[1] * c.dims[2];

  expect("lambda out of range", oats_select(model, 1.5, 1.0, &served),
         OATS_STATUS_INVALID_ARGUMENT, "1.5");
  expect("lambda NaN", oats_select(model, NAN, 1.0, &served), OATS_STATUS_INVALID_ARGUMENT,
         "NaN");
  expect("unknown width", oats_select(model, 0.2, 0.6, &served),
         OATS_STATUS_INVALID_ARGUMENT, "0.6");
  expect("unknown id", oats_select_id(model, "no-such-graph", &served),
         OATS_STATUS_NO_SUCH_CONFIG, "no-such-graph");
  OatsPolicy p = {.min_sa = 1.01, .min_ra = NAN, .max_latency_ms = NAN, .objective = 0};
  expect("policy nobody meets", oats_select_policy(model, &p, &served),
         OATS_STATUS_NONE_QUALIFIES, "policy");
  p.min_sa = NAN;
  p.objective = 9;
  expect("unknown objective", oats_select_policy(model, &p, &served),
         OATS_STATUS_INVALID_ARGUMENT, "objective 9");

  expect("infer NULL input",
         oats_infer(model, NULL, 1, c.dims[0], c.dims[1], c.dims[2], logits, 64, &need, NULL),
         OATS_STATUS_NULL_POINTER, "input");
  expect("infer wrong shape",
         oats_infer(model, c.images, 1, c.dims[0], c.dims[1] - 1, c.dims[2], logits, 64,
                    &need, NULL),
         OATS_STATUS_SHAPE, NULL);
  expect("infer small buffer",
         oats_infer(model, c.images, 1, c.dims[0], c.dims[1], c.dims[2], logits, 3, &need,
                    NULL),
         OATS_STATUS_BUFFER_TOO_SMALL, "need");
  if (need != c.classes) {
    fprintf(stderr, "FAIL: needed %zu floats, expected %zu\n", need, c.classes);
    return 1;
  }
  float *nan_image = malloc(per * sizeof *nan_image);
  memcpy(nan_image, c.images, per * sizeof *nan_image);
  nan_image[per / 2] = NAN;
  expect("infer NaN", oats_infer(model, nan_image, 1, c.dims[0], c.dims[1], c.dims[2], logits,
                                 64, &need, NULL),
         OATS_STATUS_NON_FINITE, NULL);
  free(nan_image);
  expect("infer empty batch",
         oats_infer(model, c.images, 0, c.dims[0], c.dims[1], c.dims[2], logits, 64, &need,
                    NULL),
         OATS_STATUS_SHAPE, NULL);

  size_t count = 0;
  CHECK(oats_config_count(model, &count));
  expect("config past the end", oats_config(model, count, &served),
         OATS_STATUS_INVALID_ARGUMENT, "past");
  expect("id into a small buffer", oats_config_id(model, 0, buf, 2, &need),
         OATS_STATUS_BUFFER_TOO_SMALL, "bytes");
  CHECK(oats_config_id(model, 0, buf, need, &need));
  printf("first config %s\n", buf);
  /* A message longer than the buffer is cut, NUL-terminated, and its full size reported. */
  oats_select_id(model, "no-such-graph", NULL);
  char tiny[8];
  size_t full = oats_last_error(tiny, sizeof tiny);
  if (full <= sizeof tiny || strlen(tiny) != sizeof tiny - 1) {
    fprintf(stderr, "FAIL: truncation: full %zu, got \"%s\"\n", full, tiny);
    return 1;
  }
  /* Success clears the message. */
  CHECK(oats_active(model, &served));
  if (oats_last_error(NULL, 0) != 0) {
    fprintf(stderr, "FAIL: a successful call left an error message\n");
    return 1;
  }
  free(c.images);
  oats_close(model);
  printf("errors ok\n");
  return 0;
}

/* Threads: every inference's logits must be those of the configuration it says served it. */
#define CONFIGS 3
static const double LAMBDAS[CONFIGS] = {0.0, 0.15, 1.0};
static float *expected_logits[CONFIGS];

typedef struct {
  Ctx *c;
  int id;
  int runs;
} Worker;

static void *infer_loop(void *arg) {
  Worker *w = arg;
  Ctx *c = w->c;
  float *logits = malloc(c->n * c->classes * sizeof *logits);
  for (int r = 0; r < w->runs; r++) {
    OatsConfig served;
    CHECK(oats_infer(c->model, c->images, c->n, c->dims[0], c->dims[1], c->dims[2], logits,
                     c->n * c->classes, NULL, &served));
    int k = -1;
    for (int j = 0; j < CONFIGS; j++)
      if (fabs(served.lambda - LAMBDAS[j]) < 1e-9 && served.width == 1.0) k = j;
    if (k < 0) {
      fprintf(stderr, "FAIL: served an unexpected lambda %g width %g\n", served.lambda,
              served.width);
      exit(1);
    }
    for (size_t i = 0; i < c->n * c->classes; i++) {
      if (logits[i] != expected_logits[k][i]) {
        fprintf(stderr, "FAIL: thread %d run %d: logits are not lambda %g's\n", w->id, r,
                LAMBDAS[k]);
        exit(1);
      }
    }
  }
  free(logits);
  return NULL;
}

static void *switch_loop(void *arg) {
  Worker *w = arg;
  for (int r = 0; r < w->runs; r++)
    CHECK(oats_select(w->c->model, LAMBDAS[r % CONFIGS], 1.0, NULL));
  return NULL;
}

static int threads(char **argv) {
  OatsModel *model = NULL;
  CHECK(oats_open(argv[2], NULL, &model));
  Ctx c = open_ctx(model, argv[3], argv[4]);
  size_t len = c.n * c.classes;
  for (int k = 0; k < CONFIGS; k++) {
    expected_logits[k] = malloc(len * sizeof(float));
    CHECK(oats_select(model, LAMBDAS[k], 1.0, NULL));
    CHECK(oats_infer(model, c.images, c.n, c.dims[0], c.dims[1], c.dims[2],
                     expected_logits[k], len, NULL, NULL));
  }
  pthread_t t[5];
  Worker w[5];
  for (int i = 0; i < 5; i++) {
    w[i] = (Worker){.c = &c, .id = i, .runs = i < 4 ? 25 : 2000};
    if (pthread_create(&t[i], NULL, i < 4 ? infer_loop : switch_loop, &w[i]) != 0) {
      fprintf(stderr, "FAIL: pthread_create\n");
      return 1;
    }
  }
  for (int i = 0; i < 5; i++) pthread_join(t[i], NULL);
  for (int k = 0; k < CONFIGS; k++) free(expected_logits[k]);
  free(c.images);
  oats_close(model);
  printf("threads ok\n");
  return 0;
}

/* Prints the exit and the top-1 class of each image. */
static void print_routed(Ctx *c, const char *what) {
  float *logits = malloc(c->n * c->classes * sizeof *logits);
  uint32_t *exits = malloc(c->n * sizeof *exits);
  if (logits == NULL || exits == NULL) {
    fprintf(stderr, "FAIL: out of memory\n");
    exit(1);
  }
  CHECK(oats_infer_routed(c->model, c->images, c->n, c->dims[0], c->dims[1], c->dims[2], logits,
                          c->n * c->classes, NULL, NULL, exits));
  for (size_t i = 0; i < c->n; i++)
    printf("%s image %zu exit %u class %zu\n", what, i, (unsigned)exits[i],
           argmax(logits + i * c->classes, c->classes));
  free(logits);
  free(exits);
}

static int exits(char **argv) {
  OatsModel *model = NULL;
  CHECK(oats_open(argv[2], NULL, &model));
  Ctx c = open_ctx(model, argv[3], argv[4]);
  OatsConfig served;
  CHECK(oats_select_id(model, argv[5], &served));

  uint64_t macs[8];
  size_t count = 0;
  CHECK(oats_exit_macs(model, macs, 8, &count));
  printf("exit macs");
  for (size_t i = 0; i < count; i++) printf(" %llu", (unsigned long long)macs[i]);
  printf("\n");
  if (count < 2 || macs[count - 1] <= macs[0]) {
    fprintf(stderr, "FAIL: %zu exit MACs\n", count);
    return 1;
  }
  double t[8];
  CHECK(oats_thresholds(model, t, 8, &count));
  printf("calibrated thresholds %zu\n", count);
  double calibrated0 = count > 0 ? t[0] : NAN;
  print_routed(&c, "calibrated");

  double mine[2] = {atof(argv[6]), atof(argv[7])};
  CHECK(oats_set_thresholds(model, mine, 2));
  CHECK(oats_thresholds(model, t, 8, &count));
  if (count != 2 || t[0] != mine[0] || t[1] != mine[1]) {
    fprintf(stderr, "FAIL: thresholds read back %zu: %g %g\n", count, t[0], t[1]);
    return 1;
  }
  print_routed(&c, "set");
  expect("thresholds buffer too small", oats_thresholds(model, t, 1, &count),
         OATS_STATUS_BUFFER_TOO_SMALL, "room for 1");
  if (count != 2) {
    fprintf(stderr, "FAIL: count %zu after a short buffer\n", count);
    return 1;
  }
  expect("thresholds NULL count", oats_thresholds(model, t, 8, NULL), OATS_STATUS_NULL_POINTER,
         "count");
  double one = 0.5;
  expect("one threshold for two exits", oats_set_thresholds(model, &one, 1),
         OATS_STATUS_INVALID_ARGUMENT, "thresholds");
  double nan2[2] = {NAN, 0.5};
  expect("NaN threshold", oats_set_thresholds(model, nan2, 2), OATS_STATUS_INVALID_ARGUMENT,
         "thresholds");

  expect("NULL thresholds with a count", oats_set_thresholds(model, NULL, 2),
         OATS_STATUS_NULL_POINTER, "thresholds");
  expect("no thresholds for two exits", oats_set_thresholds(model, mine, 0),
         OATS_STATUS_INVALID_ARGUMENT, "thresholds");
  double never[2] = {0.0, 0.0};
  CHECK(oats_set_thresholds(model, never, 2));
  print_routed(&c, "never");
  CHECK(oats_set_thresholds(model, NULL, 0)); /* back to the calibrated ones */
  CHECK(oats_thresholds(model, t, 8, &count));
  if (count == 0 || t[0] != calibrated0) {
    fprintf(stderr, "FAIL: not back to the calibrated thresholds (%zu)\n", count);
    return 1;
  }
  free(c.images);
  oats_close(model);
  printf("exits ok\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 7 && strcmp(argv[1], "classify") == 0) return classify(argv);
  if (argc >= 6 && strcmp(argv[1], "memory") == 0) return memory(argc, argv);
  if (argc >= 5 && strcmp(argv[1], "errors") == 0) return errors(argv);
  if (argc >= 5 && strcmp(argv[1], "threads") == 0) return threads(argv);
  if (argc >= 8 && strcmp(argv[1], "exits") == 0) return exits(argv);
  fprintf(stderr, "usage: oats_smoke classify|memory|errors|threads|exits DIR IMAGES.f32 N ...\n");
  return 2;
}

// The C ABI over c10d that src/ffi.rs declares: a TCPStore, a process group (gloo, or NCCL
// with the `nccl` feature), and the three collectives data-parallel training needs.
//
// Every entry point catches every C++ exception and returns it as a malloc'ed message in
// `*err` (free with oats_c10d_free): an exception unwinding into Rust would abort the process.
// Tensors arrive as tch's handles, which are `at::Tensor *` (torch-sys's torch_api.h).
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef OATS_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Store {
  c10::intrusive_ptr<c10d::Store> inner;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> inner;
};

char *copy_message(const char *msg) {
  size_t n = std::strlen(msg);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs f, turning any exception into *err; returns 0 on success, -1 on error.
template <typename F>
int guard(char **err, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error &e) {
    // what() carries a C++ backtrace of libtorch's internals; the message is what helps.
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception &e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception");
  }
  return -1;
}

void wait(const c10::intrusive_ptr<c10d::Work> &work) {
  // The group's own timeout bounds every operation; wait() rethrows its error.
  work->wait();
}

}  // namespace

extern "C" {

void oats_c10d_free(void *p) { std::free(p); }

void *oats_c10d_tcp_store(const char *host, uint16_t port, int64_t world, int is_server,
                          int64_t timeout_ms, char **err) {
  Store *out = nullptr;
  guard(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    out = new Store{store};
  });
  return out;
}

void oats_c10d_store_free(void *store) { delete static_cast<Store *>(store); }

int oats_c10d_store_set(void *store, const char *key, const uint8_t *data, size_t len,
                        char **err) {
  return guard(err, [&] {
    std::vector<uint8_t> v(data, data + len);
    static_cast<Store *>(store)->inner->set(std::string(key), v);
  });
}

// Blocks until `key` is set or the store's timeout passes.
int oats_c10d_store_get(void *store, const char *key, uint8_t **data, size_t *len, char **err) {
  return guard(err, [&] {
    std::vector<uint8_t> v = static_cast<Store *>(store)->inner->get(std::string(key));
    *data = static_cast<uint8_t *>(std::malloc(v.empty() ? 1 : v.size()));
    if (*data == nullptr) {
      throw std::bad_alloc();
    }
    if (!v.empty()) {
      std::memcpy(*data, v.data(), v.size());
    }
    *len = v.size();
  });
}

// device_kind: 0 = the machine's default (its hostname's address), 1 = the address of
// `device_arg` (a host name or IP), 2 = the network interface named `device_arg`.
void *oats_c10d_gloo(void *store, int64_t rank, int64_t world, int64_t timeout_ms,
                     int device_kind, const char *device_arg, char **err) {
  Group *out = nullptr;
  guard(err, [&] {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    switch (device_kind) {
      case 1:
        opts->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(std::string(device_arg)));
        break;
      case 2:
        opts->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(std::string(device_arg)));
        break;
      default:
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    // One gloo worker thread: the collectives here run one at a time, after each backward.
    opts->threads = 1;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        static_cast<Store *>(store)->inner, static_cast<int>(rank), static_cast<int>(world),
        opts);
    out = new Group{pg};
  });
  return out;
}

void *oats_c10d_nccl(void *store, int64_t rank, int64_t world, int64_t timeout_ms, char **err) {
  Group *out = nullptr;
#ifdef OATS_NCCL
  guard(err, [&] {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        static_cast<Store *>(store)->inner, static_cast<int>(rank), static_cast<int>(world),
        opts);
    out = new Group{pg};
  });
#else
  (void)store;
  (void)rank;
  (void)world;
  (void)timeout_ms;
  *err = copy_message(
      "this build has no NCCL: data-parallel training on CUDA needs oats-train built with "
      "--features nccl against a CUDA libtorch (README, \"Data-parallel training\")");
#endif
  return out;
}

void oats_c10d_group_free(void *group) { delete static_cast<Group *>(group); }

// op: 0 = sum, 1 = max, 2 = min.
int oats_c10d_all_reduce(void *group, void *tensor, int op, char **err) {
  return guard(err, [&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor *>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == 1 ? c10d::ReduceOp::MAX
                            : (op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM);
    wait(static_cast<Group *>(group)->inner->allreduce(ts, opts));
  });
}

int oats_c10d_broadcast(void *group, void *tensor, int64_t root, char **err) {
  return guard(err, [&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor *>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(static_cast<Group *>(group)->inner->broadcast(ts, opts));
  });
}

int oats_c10d_barrier(void *group, char **err) {
  return guard(err, [&] { wait(static_cast<Group *>(group)->inner->barrier()); });
}

}  // extern "C"

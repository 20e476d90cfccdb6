//! Declarations of `shim.cpp`'s C ABI. Handles are opaque; every fallible call returns its
//! C++ exception's message through `err` (malloc'ed, freed with `oats_c10d_free`).
use std::os::raw::{c_char, c_int, c_void};

extern "C" {
    pub fn oats_c10d_free(p: *mut c_void);
    pub fn oats_c10d_tcp_store(
        host: *const c_char,
        port: u16,
        world: i64,
        is_server: c_int,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn oats_c10d_store_free(store: *mut c_void);
    pub fn oats_c10d_store_set(
        store: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn oats_c10d_store_get(
        store: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn oats_c10d_gloo(
        store: *mut c_void,
        rank: i64,
        world: i64,
        timeout_ms: i64,
        device_kind: c_int,
        device_arg: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn oats_c10d_nccl(
        store: *mut c_void,
        rank: i64,
        world: i64,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn oats_c10d_group_free(group: *mut c_void);
    pub fn oats_c10d_all_reduce(
        group: *mut c_void,
        tensor: *mut c_void,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn oats_c10d_broadcast(
        group: *mut c_void,
        tensor: *mut c_void,
        root: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn oats_c10d_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
}

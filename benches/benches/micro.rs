//! Micro benchmarks for the hot paths: frame header decode, unmasking (next
//! to a plain memcpy of the same size), frame encode, fan-out encode-once
//! versus encode-per-subscriber, and channel index subscribe/unsubscribe.
//!
//! cargo bench -p benches --bench micro

use std::hint::black_box;
use std::net::{TcpListener, TcpStream};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use slab::Slab;
use surge::channels::index::ChannelIndex;
use surge::core::conn::Conn;
use surge::wire::frame::{decode_header, encode_frame, OpCode, Role};
use surge::wire::mask::apply_mask;

const PUBLICATION: &[u8] = br#"{"ch":"clinic:42","off":1234,"epoch":"9f3c2a1b","data":{"slots":[{"t":"09:00","free":3},{"t":"09:15","free":0}]}}"#;

fn frames(c: &mut Criterion) {
    let mut masked = Vec::new();
    encode_frame(
        &mut masked,
        OpCode::Text,
        br#"{"op":"sub","ch":"clinic:42"}"#,
        Some([1, 2, 3, 4]),
    );
    c.bench_function("frame header decode", |b| {
        b.iter(|| decode_header(black_box(&masked), Role::Server))
    });

    c.bench_function("frame encode (publication)", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(PUBLICATION.len() + 10);
            encode_frame(&mut out, OpCode::Text, black_box(PUBLICATION), None);
            out
        })
    });

    let mut group = c.benchmark_group("16 KiB payload");
    let src = vec![0x5au8; 16 * 1024];
    let mut buf = src.clone();
    group.throughput(Throughput::Bytes(src.len() as u64));
    group.bench_function("unmask in place", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), [0x37, 0xfa, 0x21, 0x3d]))
    });
    group.bench_function("memcpy (for scale)", |b| {
        b.iter(|| buf.copy_from_slice(black_box(&src)))
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    let mut group = c.benchmark_group("fan-out to 1000 subscribers");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("encode once, share Bytes", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(PUBLICATION.len() + 10);
            encode_frame(&mut out, OpCode::Text, PUBLICATION, None);
            let frame = Bytes::from(out);
            let queued: Vec<Bytes> = (0..SUBSCRIBERS).map(|_| frame.clone()).collect();
            black_box(queued)
        })
    });
    group.bench_function("encode per subscriber", |b| {
        b.iter(|| {
            let queued: Vec<Vec<u8>> = (0..SUBSCRIBERS)
                .map(|_| {
                    let mut out = Vec::with_capacity(PUBLICATION.len() + 10);
                    encode_frame(&mut out, OpCode::Text, PUBLICATION, None);
                    out
                })
                .collect();
            black_box(queued)
        })
    });
    group.finish();
}

fn index(c: &mut Criterion) {
    // Real sockets: the index works on the server's own connection slab.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let socket = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let mut conns: Slab<Conn> = Slab::new();
    for _ in 0..1000 {
        conns.insert(Conn::new(socket.try_clone().expect("fd"), 0));
    }
    let mut index = ChannelIndex::default();
    for t in 0..1000u32 {
        let _ = index.subscribe(&mut conns, t, "clinic:busy", 32);
    }
    c.bench_function("index subscribe + unsubscribe (channel of 1000)", |b| {
        b.iter_batched(
            || (),
            |()| {
                let _ = index.unsubscribe(&mut conns, 500, "clinic:busy");
                let _ = index.subscribe(&mut conns, 500, "clinic:busy", 32);
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("index subscribe + unsubscribe (new private channel)", |b| {
        b.iter(|| {
            let _ = index.subscribe(&mut conns, 7, "user/8812", 32);
            let _ = index.unsubscribe(&mut conns, 7, "user/8812");
        })
    });
}

criterion_group!(benches, frames, fan_out, index);
criterion_main!(benches);

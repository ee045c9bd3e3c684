//! Disassembly and assembly of a generated layer of about 100 MB: 10,000 small
//! files (0 to 8 KiB) in 100 directories, and three large files of 20 MiB.

use std::collections::HashMap;
use std::hint::black_box;
use std::io;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plies_tarsplit::{Disassembler, Entry, Packer, Unpacker, assemble};

/// The layer tar, and each file's contents by name.
fn layer() -> (Vec<u8>, HashMap<Vec<u8>, Vec<u8>>) {
    let mut builder = tar::Builder::new(Vec::with_capacity(110 << 20));
    let mut files = HashMap::new();
    let mut add = |builder: &mut tar::Builder<Vec<u8>>, name: String, data: Vec<u8>| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, &name, &data[..]).unwrap();
        files.insert(name.into_bytes(), data);
    };
    for d in 0..100 {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder
            .append_data(&mut header, format!("usr/share/dir{d:03}/"), io::empty())
            .unwrap();
        for f in 0..100 {
            let len = (d * 100 + f) * 7919 % 8192;
            let data = (0..len).map(|i| (i * 31 + f) as u8).collect();
            add(
                &mut builder,
                format!("usr/share/dir{d:03}/file{f:03}"),
                data,
            );
        }
    }
    for big in 0..3 {
        let data = (0..20usize << 20).map(|i| (i / 4093 + big) as u8).collect();
        add(&mut builder, format!("opt/big{big}.bin"), data);
    }
    (builder.into_inner().unwrap(), files)
}

fn bench(c: &mut Criterion) {
    let (tar, files) = layer();
    let entries: Vec<Entry> = Disassembler::new(&tar[..], Vec::new()).finish().unwrap();
    let gz = Disassembler::new(&tar[..], Packer::gzip(Vec::new()))
        .finish()
        .unwrap()
        .finish()
        .unwrap()
        .finish()
        .unwrap();
    let source = |name: &[u8]| Ok::<_, io::Error>(&files[name][..]);

    let mut group = c.benchmark_group(format!("layer of {} MB", tar.len() / 1_000_000));
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.sample_size(10);

    group.bench_function("disassemble, tar-split JSON", |b| {
        b.iter(|| {
            let mut reader = Disassembler::new(&tar[..], Packer::new(Vec::new()));
            io::copy(&mut reader, &mut io::sink()).unwrap();
            black_box(reader.finish().unwrap().finish().unwrap());
        })
    });
    group.bench_function("disassemble, tar-split.json.gz", |b| {
        b.iter(|| {
            let mut reader = Disassembler::new(&tar[..], Packer::gzip(Vec::new()));
            io::copy(&mut reader, &mut io::sink()).unwrap();
            black_box(reader.finish().unwrap().finish().unwrap().finish().unwrap());
        })
    });
    group.bench_function("assemble, entries in memory", |b| {
        b.iter(|| {
            let entries = entries.iter().cloned().map(Ok);
            black_box(assemble(entries, source, io::sink()).unwrap());
        })
    });
    group.bench_function("assemble, from tar-split.json.gz", |b| {
        b.iter(|| {
            black_box(assemble(Unpacker::gzip(&gz[..]), source, io::sink()).unwrap());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! How a rank reads a column slice (row-parallel TP): one positioned read per row of the
//! slice, against one read of the whole span and a copy out of each row (every rank then
//! reads every row). The loader reads windows row by row; this is the figure behind it.
//!
//! An 8192 × 8192 bf16 tensor in a temporary safetensors file, read once first so both
//! read it from the page cache; TP sizes 2, 4 and 8; median of 5 each.
//!
//! `cargo bench --bench column_reads`.

use std::time::Instant;

use wmap::checkpoint::Checkpoint;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (rows, cols, es) = (8192u64, 8192u64, 2u64);
    let dir = std::env::temp_dir().join(format!("wmap-bench-column-reads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let header = format!(
        r#"{{"w":{{"dtype":"BF16","shape":[{rows},{cols}],"data_offsets":[0,{}]}}}}"#,
        rows * cols * es
    );
    let header = format!("{header:<width$}", width = header.len().div_ceil(8) * 8);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend((0..rows * cols * es).map(|i| (i % 251) as u8));
    let file = dir.join("model.safetensors");
    std::fs::write(&file, bytes).expect("the bench checkpoint");
    let ckpt = Checkpoint::open(&dir).expect("open the bench checkpoint");
    let e = ckpt.tensors["w"].clone();
    let row = cols * es;
    let mut span = vec![0u8; (rows * row) as usize];
    ckpt.read_at(e.shard, e.offset, &mut span)
        .expect("warm the page cache");
    println!("{rows} x {cols} bf16, page cache, median of 5");
    for tp in [2u64, 4, 8] {
        let width = cols / tp * es;
        let mut out = vec![0u8; (rows * width) as usize];
        let per_row = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for r in 0..rows {
                        let dst = &mut out[(r * width) as usize..((r + 1) * width) as usize];
                        ckpt.read_at(e.shard, e.offset + r * row, dst)
                            .expect("a row");
                    }
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let spanned = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    ckpt.read_at(e.shard, e.offset, &mut span)
                        .expect("the span");
                    for r in 0..rows {
                        let (from, to) = ((r * row) as usize, (r * width) as usize);
                        out[to..to + width as usize]
                            .copy_from_slice(&span[from..from + width as usize]);
                    }
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!(
            "tp {tp}: per-row reads {:.1} ms, one span read + copy {:.1} ms",
            per_row * 1e3,
            spanned * 1e3
        );
    }
    // Only the file this bench wrote, then its own (now empty) folder.
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&dir);
}

//! Sort owns putting a replay's input in event-time order in bounded memory:
//! lines are keyed by (ts, event_id, input position), sorted in runs of at
//! most `run_bytes`, spilled to files beside the output, and merged. The
//! input position breaks ties, so the order, and so every replay's output,
//! is the same byte for byte whatever the run size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{BacktestError, io};

/// One line and its sort key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Keyed {
    pub ts_ms: i64,
    pub event_id: String,
    pub seq: u64,
    pub line: String,
}

impl Keyed {
    fn bytes(&self) -> usize {
        self.event_id.len() + self.line.len() + 64
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.ts_ms.to_le_bytes())?;
        w.write_all(&self.seq.to_le_bytes())?;
        for s in [&self.event_id, &self.line] {
            w.write_all(&(s.len() as u64).to_le_bytes())?;
            w.write_all(s.as_bytes())?;
        }
        Ok(())
    }

    fn read(r: &mut impl Read) -> std::io::Result<Option<Keyed>> {
        let mut n = [0u8; 8];
        match r.read_exact(&mut n) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let ts_ms = i64::from_le_bytes(n);
        r.read_exact(&mut n)?;
        let seq = u64::from_le_bytes(n);
        let mut text = || -> std::io::Result<String> {
            r.read_exact(&mut n)?;
            let mut buf = vec![0u8; usize::try_from(u64::from_le_bytes(n)).unwrap_or(0)];
            r.read_exact(&mut buf)?;
            String::from_utf8(buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        };
        let event_id = text()?;
        let line = text()?;
        Ok(Some(Keyed {
            ts_ms,
            event_id,
            seq,
            line,
        }))
    }
}

/// Lines in key order: from memory when the input fit in one run, else
/// merged from the spilled runs.
pub struct Sorted {
    memory: std::vec::IntoIter<Keyed>,
    runs: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(Keyed, usize)>>,
    dir: Option<PathBuf>,
    /// Runs spilled to disk, for the report.
    pub spilled_runs: usize,
}

impl Sorted {
    /// Reads `input` line by line; `key` gives a line's (ts, event_id), or
    /// None for a line that is skipped (counted by the caller).
    pub fn new(
        input: impl BufRead,
        input_path: &Path,
        spill_dir: &Path,
        run_bytes: usize,
        mut key: impl FnMut(&str) -> Option<(i64, String)>,
    ) -> Result<Sorted, BacktestError> {
        let mut run: Vec<Keyed> = Vec::new();
        let mut held = 0usize;
        let mut files = Vec::new();
        for (seq, line) in input.lines().enumerate() {
            let line = line.map_err(io(input_path))?;
            let Some((ts_ms, event_id)) = key(&line) else {
                continue;
            };
            let k = Keyed {
                ts_ms,
                event_id,
                seq: seq as u64,
                line,
            };
            held += k.bytes();
            run.push(k);
            if held >= run_bytes {
                files.push(spill(&mut run, spill_dir, files.len())?);
                held = 0;
            }
        }
        run.sort_unstable();
        if files.is_empty() {
            return Ok(Sorted {
                memory: run.into_iter(),
                runs: Vec::new(),
                heap: BinaryHeap::new(),
                dir: None,
                spilled_runs: 0,
            });
        }
        if !run.is_empty() {
            files.push(spill(&mut run, spill_dir, files.len())?);
        }
        let mut runs = Vec::with_capacity(files.len());
        let mut heap = BinaryHeap::new();
        for (i, path) in files.iter().enumerate() {
            let mut r = BufReader::with_capacity(64 * 1024, File::open(path).map_err(io(path))?);
            if let Some(k) = Keyed::read(&mut r).map_err(io(path))? {
                heap.push(Reverse((k, i)));
            }
            runs.push(r);
        }
        Ok(Sorted {
            memory: Vec::new().into_iter(),
            spilled_runs: runs.len(),
            runs,
            heap,
            dir: Some(spill_dir.to_owned()),
        })
    }

    pub fn next_line(&mut self) -> Result<Option<Keyed>, BacktestError> {
        if self.runs.is_empty() {
            return Ok(self.memory.next());
        }
        let Some(Reverse((k, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let path = self.dir.clone().unwrap_or_default();
        if let Some(next) = Keyed::read(&mut self.runs[i]).map_err(io(&path))? {
            self.heap.push(Reverse((next, i)));
        }
        Ok(Some(k))
    }
}

impl Drop for Sorted {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn spill(run: &mut Vec<Keyed>, dir: &Path, n: usize) -> Result<PathBuf, BacktestError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    run.sort_unstable();
    let path = dir.join(format!("run-{n:05}"));
    let f = File::create(&path).map_err(io(&path))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    for k in run.drain(..) {
        k.write(&mut w).map_err(io(&path))?;
    }
    w.flush().map_err(io(&path))?;
    run.shrink_to(0);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(run_bytes: usize) -> Vec<u64> {
        let lines: String = (0..1000u64)
            .map(|i| format!("{} e{} line{i}\n", (i * 7919) % 97, i % 13))
            .collect();
        let dir = std::env::temp_dir().join(format!("aa-sort-{}-{run_bytes}", std::process::id()));
        let mut s = Sorted::new(lines.as_bytes(), Path::new("mem"), &dir, run_bytes, |l| {
            let mut p = l.split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.to_owned()))
        })
        .expect("sort");
        let mut out = Vec::new();
        while let Some(k) = s.next_line().expect("read") {
            out.push(k.seq);
        }
        assert!(s.spilled_runs > 0 || run_bytes > 1 << 20);
        drop(s);
        assert!(!dir.exists(), "spill files are removed");
        out
    }

    #[test]
    fn spilled_runs_merge_to_the_in_memory_order() {
        let whole = order(usize::MAX);
        assert_eq!(whole.len(), 1000);
        assert_eq!(order(4096), whole);
        assert_eq!(order(100), whole);
    }
}

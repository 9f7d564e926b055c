//! Report owns how a benchmark run reads: each figure on its line, the
//! ratios beside the rates they compare, the lake's and OTLP's figures when
//! the run measured them.

use std::fmt;

use super::BenchReport;

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: f64| b / 1024.0 / 1024.0;
        writeln!(f, "events                      {}", self.events)?;
        writeln!(
            f,
            "mean event size             {:.0} B",
            self.mean_event_bytes
        )?;
        writeln!(
            f,
            "raw consume (floor)         {:.0} events/s",
            self.raw_consume_eps
        )?;
        writeln!(
            f,
            "pipeline to durable Parquet {:.0} events/s",
            self.pipeline_eps
        )?;
        writeln!(
            f,
            "ratio pipeline/floor        {:.2}",
            self.pipeline_eps / self.raw_consume_eps
        )?;
        writeln!(
            f,
            "Parquet written             {:.1} MiB in {} files ({:.1}x smaller than the JSON)",
            mib(self.parquet_bytes as f64),
            self.parquet_files,
            self.mean_event_bytes * self.events as f64 / self.parquet_bytes.max(1) as f64
        )?;
        writeln!(
            f,
            "peak RSS growth in pipeline {:.0} MiB (budget {:.0} MiB)",
            mib(self.peak_rss_growth_bytes as f64),
            mib(self.memory_budget_bytes as f64)
        )?;
        writeln!(
            f,
            "peak RSS growth in floor    {:.0} MiB (broker responses and librdkafka alone)",
            mib(self.floor_rss_growth_bytes as f64),
        )?;
        let us = 1e6;
        writeln!(
            f,
            "CPU per event, floor        {:.2} µs (this process's threads, an embedded broker's too)",
            self.floor_cpu_per_event_secs * us
        )?;
        writeln!(
            f,
            "CPU per event, pipeline     {:.2} µs",
            self.pipeline_cpu_per_event_secs * us
        )?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        write!(
            f,
            "CPU-bound ceiling           {:.0} events/s on {cores} cores at that cost",
            cores / self.pipeline_cpu_per_event_secs.max(1e-12)
        )?;
        if let Some(lake) = &self.lake {
            writeln!(f)?;
            writeln!(
                f,
                "pipeline to the S3 lake     {:.0} events/s ({:.1} MiB in {} objects)",
                lake.eps,
                mib(lake.parquet_bytes as f64),
                lake.parquet_files
            )?;
            writeln!(
                f,
                "ratio S3 lake/local disk    {:.2}",
                lake.eps / self.pipeline_eps.max(1e-9)
            )?;
            writeln!(
                f,
                "peak RSS growth, S3 lake    {:.0} MiB (budget {:.0} MiB; run first, so the local figure above starts from what it left)",
                mib(lake.peak_rss_growth_bytes as f64),
                mib(self.memory_budget_bytes as f64)
            )?;
            write!(
                f,
                "CPU per event, S3 lake      {:.2} µs",
                lake.cpu_per_event_secs * us
            )?;
        }
        if let Some(o) = &self.otlp {
            writeln!(f)?;
            writeln!(
                f,
                "pipeline, {} input   {:.0} spans/s ({} messages of ~{} spans, {:.0} B per span)",
                o.format.as_str(),
                o.spans_per_sec,
                o.messages,
                self.events / o.messages.max(1),
                o.mean_span_bytes
            )?;
            writeln!(
                f,
                "ratio {}/v1 per call  {:.2}",
                o.format.as_str(),
                o.spans_per_sec / self.pipeline_eps.max(1e-9)
            )?;
            write!(
                f,
                "CPU per span, {}     {:.2} µs",
                o.format.as_str(),
                o.cpu_per_span_secs * us
            )?;
        }
        Ok(())
    }
}

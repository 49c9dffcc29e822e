//! The `engine-bench` command. See the library documentation.

use clap::Parser;
use engine_bench::args::{Args, Format};
use engine_bench::report;
use engine_core::raw::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn allocations() -> u64 {
    ALLOC.allocations()
}

fn main() {
    let args = Args::parse();
    let outcome = match engine_bench::run(&args, Some(allocations)) {
        Ok(outcome) => outcome,
        Err(message) => {
            eprintln!("engine-bench: {message}");
            std::process::exit(1);
        }
    };
    let summaries = report::summarize(&outcome.results);
    if let Some(path) = &args.json_out {
        let written = serde_json::to_string_pretty(&outcome.results)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("engine-bench: writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    match args.output_format {
        Format::Json => match serde_json::to_string_pretty(&outcome.results) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("engine-bench: {e}");
                std::process::exit(1);
            }
        },
        Format::Markdown => print!("{}", report::markdown(&summaries, args.repeat)),
        Format::Text => {
            print!("{}", report::table(&summaries, args.repeat));
            for r in outcome
                .results
                .iter()
                .filter(|r| r.verified_bytes.is_some())
            {
                if r.repetition == 0 {
                    println!(
                        "verify: {} wrote and read back {} bytes intact",
                        r.engine,
                        r.verified_bytes.unwrap_or(0)
                    );
                }
            }
            println!("\n{}", outcome.selection);
        }
    }
    if let Some(path) = &args.plot {
        if let Err(e) = std::fs::write(path, report::svg(&summaries)) {
            eprintln!("engine-bench: writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

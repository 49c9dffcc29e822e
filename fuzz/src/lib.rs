//! The bodies of the `cargo fuzz` targets, one function per target, each taking libFuzzer's
//! bytes. They are plain functions so that `cargo test -p conformance --test fuzz` replays
//! them on the stable toolchain (over the seeds in `corpus/` and random bytes) without
//! libFuzzer: a panic in either is a bug, whoever finds it.
//!
//! - [`request_validation`]: a request of any kind, with any offset, length, buffers and
//!   flags, on a file with any reachable geometry and open options, open, closed or another
//!   engine's, through `engine_core::raw::validate`. It must not panic, and what it accepts
//!   must keep the rules it states (an accepted request fits `off_t`, is aligned where the
//!   file enforces alignment, is a legal untorn write where flagged one, and so on); what it
//!   refuses, it refuses for the request's own operation.
//! - [`environment`]: any `ENGINE_*` variables with any values through `Settings::parse`. It
//!   must not panic; what it accepts must be a configuration an engine can be built with,
//!   naming only known backends, each once.

use engine::{Choice, Settings, BUILTIN_BACKENDS, VARIABLES};
use engine_core::raw::{validate, Common};
use engine_core::{
    AlignedBuf, AllocateMode, EngineConfig, ErrorKind, File, Geometry, Op, OpenOptions, Request,
    WriteFlags,
};

/// libFuzzer's bytes, read front to back; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.byte()))
    }

    /// A power of two from 1 to `1 << max_shift`.
    fn pow2(&mut self, max_shift: u32) -> u32 {
        1 << (u32::from(self.byte()) % (max_shift + 1))
    }

    /// An offset: small and sector-like, anything, or near the largest file offset.
    fn offset(&mut self) -> u64 {
        match self.byte() % 4 {
            0 => u64::from(self.byte()) * u64::from(self.pow2(16)),
            1 => self.u64(),
            2 => (i64::MAX as u64).wrapping_sub(u64::from(self.byte())),
            _ => u64::from(self.byte()) << 8 | u64::from(self.byte()),
        }
    }

    /// A buffer length up to 1 MiB: a multiple of a power of two, or anything small.
    fn len(&mut self) -> usize {
        match self.byte() % 3 {
            0 => usize::from(self.byte()) * self.pow2(12) as usize,
            1 => self.pow2(20) as usize,
            _ => usize::from(self.byte()) << 8 | usize::from(self.byte()),
        }
    }
}

/// A geometry the probe could report: power-of-two alignments, and untorn-write limits that
/// are none at all or a power-of-two range.
fn geometry(input: &mut Input<'_>) -> Geometry {
    let mut g = Geometry::FALLBACK;
    g.mem_align = input.pow2(16);
    g.offset_align = input.pow2(16);
    g.read_offset_align = input.pow2(16).min(g.offset_align);
    g.logical_block_size = g.offset_align;
    g.physical_block_size = g.offset_align.max(input.pow2(16));
    g.is_block_device = input.byte() % 4 == 0;
    if input.bool() {
        g.atomic_write_unit_min = input.pow2(16);
        g.atomic_write_unit_max = g.atomic_write_unit_min.max(input.pow2(20));
        g.atomic_write_segments_max = u32::from(input.byte() % 3);
    }
    g
}

fn buffer(input: &mut Input<'_>) -> Option<AlignedBuf> {
    let (len, align) = (input.len(), input.pow2(16) as usize);
    AlignedBuf::zeroed(len, align).ok()
}

fn buffers(input: &mut Input<'_>) -> Vec<AlignedBuf> {
    (0..input.byte() % 5)
        .filter_map(|_| buffer(input))
        .collect()
}

fn request(input: &mut Input<'_>, file: &File) -> Option<Request> {
    let flags = {
        let bits = input.byte();
        [
            WriteFlags::DSYNC,
            WriteFlags::ATOMIC,
            WriteFlags::SYNC_DATA_AFTER,
        ]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 == 1)
        .fold(WriteFlags::NONE, |all, (_, flag)| all | flag)
    };
    let offset = input.offset();
    let request = match input.byte() % 11 {
        0 => Request::read(file, offset, buffer(input)?, 0),
        1 => Request::read_exact(file, offset, buffer(input)?, 0),
        2 => Request::write(file, offset, buffer(input)?, 0).with_flags(flags),
        3 => Request::write_all(file, offset, buffer(input)?, 0).with_flags(flags),
        4 => Request::read_vectored(file, offset, buffers(input), 0),
        5 => Request::write_vectored(file, offset, buffers(input), 0).with_flags(flags),
        6 => Request::sync_data(file, 0),
        7 => Request::sync_all(file, 0),
        8 => {
            let mode = [
                AllocateMode::Allocate,
                AllocateMode::KeepSize,
                AllocateMode::PunchHole,
                AllocateMode::ZeroRange,
            ][usize::from(input.byte() % 4)];
            Request::allocate(file, offset, input.offset(), mode, 0)
        }
        9 => Request::set_len(file, offset, 0),
        _ => Request::metadata(file, 0),
    };
    Some(request)
}

/// One request through the validation every backend runs; see the crate's documentation.
///
/// # Panics
///
/// When the validation panics, or accepts a request that breaks one of its rules.
pub fn request_validation(data: &[u8]) {
    let mut input = Input(data);
    let config = EngineConfig {
        strict: input.bool(),
        ..EngineConfig::default()
    };
    let (engine, other) = (Common::new(config.clone()), Common::new(config));
    let align_min = match input.bool() {
        true => input.pow2(16),
        false => 0,
    };
    let options = OpenOptions::new()
        .read(input.bool())
        .write(input.bool())
        .direct(input.bool())
        .align_min(align_min);
    let mut geometry = geometry(&mut input);
    if align_min > 0 {
        geometry.require_alignment(align_min);
    }
    let state = input.byte() % 8;
    let owner = if state == 1 { &other } else { &engine };
    // Any descriptor will do: validation reads the handle, never the file.
    let Ok(std) = std::fs::File::open("/dev/null") else {
        return;
    };
    let file = owner.file(std, "/dev/null".as_ref(), options, geometry, 0, None);
    if state == 0 {
        owner.close(&file).expect("a file's first close succeeds");
    }
    let Some(request) = request(&mut input, &file) else {
        return;
    };
    match validate(engine.engine_id(), &request) {
        Ok(()) => accepted_keeps_the_rules(&request, &file, state),
        Err(error) => {
            let op = request.op();
            assert_eq!(
                error.op(),
                op,
                "refused {op:?} as another operation: {error}"
            );
        }
    }
}

/// The rules `validate` states, checked on a request it accepted.
fn accepted_keeps_the_rules(request: &Request, file: &File, state: u8) {
    let op = request.op();
    let options = file.options();
    let g = file.geometry();
    assert!(state > 1, "accepted a request on a closed or foreign file");
    match op {
        Op::Read => assert!(
            options.is_read(),
            "accepted a read on a file not open for it"
        ),
        Op::Write | Op::Allocate | Op::SetLen => {
            assert!(options.is_write(), "accepted {op:?} on a read-only file")
        }
        _ => {}
    }
    let len = request.len() as u64;
    let offset_max = i64::MAX as u64;
    match request {
        Request::Allocate {
            offset, len, mode, ..
        } => {
            assert!(*len > 0, "accepted an empty allocate");
            assert!(
                offset
                    .checked_add(*len)
                    .is_some_and(|end| end <= offset_max),
                "accepted an allocate past off_t"
            );
            assert!(
                !g.is_block_device || mode.zeroes(),
                "accepted {mode:?} on a block device"
            );
            let align = u64::from(g.offset_align);
            if mode.zeroes() && (g.is_block_device || file.enforces_alignment()) {
                assert!(
                    offset % align == 0 && len % align == 0,
                    "unaligned {mode:?}"
                );
            }
            return;
        }
        Request::SetLen { len, .. } => {
            assert!(*len <= offset_max, "accepted a length past off_t");
            assert!(!g.is_block_device, "accepted set_len on a block device");
            return;
        }
        _ => {}
    }
    let Some(offset) = request.offset() else {
        return;
    };
    assert!(
        offset.checked_add(len).is_some_and(|end| end <= offset_max),
        "accepted {op:?} at {offset} of {len} bytes past off_t"
    );
    if request.write_flags().contains(WriteFlags::ATOMIC) {
        assert!(
            options.is_direct(),
            "accepted an untorn write on a buffered file"
        );
        assert!(
            len.is_power_of_two()
                && len >= u64::from(g.atomic_write_unit_min)
                && len <= u64::from(g.atomic_write_unit_max)
                && offset % len == 0,
            "accepted an untorn write of {len} at {offset} outside the limits {g}"
        );
    }
    if file.enforces_alignment() {
        let offset_align = match op {
            Op::Read => g.read_offset_align,
            _ => g.offset_align,
        };
        assert!(
            offset % u64::from(offset_align) == 0,
            "accepted {op:?} at unaligned offset {offset} ({g})"
        );
        for buf in request.bufs() {
            if request.is_vectored() && buf.is_empty() {
                continue;
            }
            assert!(
                buf.as_ptr() as usize % g.mem_align as usize == 0
                    && buf.len() % g.offset_align as usize == 0,
                "accepted {op:?} with a buffer of {} bytes at {:p} ({g})",
                buf.len(),
                buf.as_ptr()
            );
        }
    }
}

/// Environment variables through the parser; see the crate's documentation.
///
/// The bytes are lines; a line's first byte picks one of the variables the engine reads
/// (below 0x80) or takes the line up to `=` as the name, and the rest is the value.
///
/// # Panics
///
/// When the parser panics, or accepts settings an engine could not be built with.
pub fn environment(data: &[u8]) {
    let lines: Vec<(String, String)> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let (&first, rest) = line.split_first()?;
            let rest = String::from_utf8_lossy(rest).into_owned();
            Some(match first {
                0..0x80 => {
                    let name = VARIABLES[usize::from(first) % VARIABLES.len()].0;
                    (name.to_string(), rest)
                }
                _ => match rest.split_once('=') {
                    Some((name, value)) => (name.to_string(), value.to_string()),
                    None => (rest, String::new()),
                },
            })
        })
        .collect();
    let pairs = lines.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    match Settings::parse(pairs, &BUILTIN_BACKENDS) {
        Ok(settings) => {
            if let Err(e) = settings.config.validate() {
                panic!("parsed {lines:?} into settings no engine takes: {e}");
            }
            if let Choice::List(names) = &settings.choice {
                assert!(!names.is_empty(), "parsed {lines:?} into an empty list");
                for (i, name) in names.iter().enumerate() {
                    assert!(
                        BUILTIN_BACKENDS.contains(&name.as_str()),
                        "parsed {lines:?}: unknown backend {name}"
                    );
                    assert!(!names[..i].contains(name), "parsed {lines:?}: {name} twice");
                }
            }
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "parsing {lines:?}: {e}"),
    }
}

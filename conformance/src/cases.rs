//! The cases. Each is a plain function over [`Backend`]; the contract point it pins is in its
//! doc line.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use engine_core::raw::FileRaw;
use engine_core::testing::FaultAction;
use engine_core::{
    AlignTarget, AlignedBuf, AllocateMode, Backend, BackendExt, Completion, ErrorKind, File,
    Geometry, Op, OpenOptions, PageAllocator, PagePool, PoolConfig, Queue, Request, WriteFlags,
    IO_BYTES_MAX,
};

use crate::runtime::block_on;
use crate::HookCall;
use crate::{
    buf, misaligned_buf, pattern, read_exact, rw, write_all, Case, CaseResult, Harness, Hook, Skip,
    DEPTH,
};

/// The cases that measure the filesystem's free space, which the files of any other case
/// change: when trials run side by side, these run alone ([`crate::runner::Trial::exclusive`]).
pub const EXCLUSIVE: [&str; 2] = [
    "a_dropped_file_lets_go_of_its_storage",
    "a_closed_file_is_let_go_of_by_its_queues",
];

/// Every case, in order.
pub fn all<E: Backend + 'static>() -> Vec<Case<E>>
where
    E::Queue: Send,
{
    macro_rules! cases {
        ($($name:ident),* $(,)?) => {
            vec![$(Case { name: stringify!($name), run: $name::<E> }),*]
        };
    }
    cases![
        geometry_is_probed_and_sane,
        geometry_matches_the_reference_probe,
        misaligned_memory_rejected_at_512,
        misaligned_offset_rejected_at_512,
        misaligned_length_rejected_at_512,
        misaligned_memory_rejected_at_4096,
        misaligned_offset_rejected_at_4096,
        misaligned_length_rejected_at_4096,
        aligned_direct_io_round_trips,
        read_at_eof_minus_one_returns_one_byte,
        read_at_eof_returns_zero,
        read_past_eof_by_a_block_returns_zero,
        read_across_eof_returns_bytes_up_to_eof,
        direct_read_across_eof_returns_bytes_up_to_eof,
        read_exact_reports_unexpected_eof_with_count,
        read_your_writes,
        overwrite_in_the_middle_is_visible,
        write_past_eof_leaves_a_zero_hole,
        short_reads_are_looped_by_read_exact,
        short_writes_are_looped_by_write_all,
        single_read_returns_short_count,
        write_of_zero_bytes_is_write_zero,
        eintr_is_retried_inside_the_engine,
        eagain_is_retried_inside_the_engine,
        eio_on_read_surfaces_once_with_context,
        enospc_on_write_is_no_space,
        sync_data_and_sync_all_are_distinct_operations,
        sync_after_writes_succeeds,
        syncs_on_direct_files_reach_the_os,
        failed_sync_poisons_every_later_sync,
        reopening_clears_the_poison,
        failed_dsync_write_poisons_the_file,
        durable_writes_complete_written_and_synced,
        a_failed_durable_write_poisons_the_file,
        atomic_writes_are_checked_before_submission,
        batch_returns_one_result_per_request_in_order,
        empty_batch_returns_nothing,
        queue_hands_back_the_request_when_full,
        queue_yields_one_completion_per_push,
        queue_completes_invalid_requests_with_errors,
        queue_wait_is_bounded_by_in_flight,
        async_submitters_wait_when_the_queue_is_full,
        many_in_flight_complete_out_of_order,
        futures_polled_by_other_executors_complete,
        dropped_future_keeps_its_buffer_until_completion,
        dropping_the_engine_completes_work_in_flight,
        dropping_a_queue_with_work_in_flight_is_safe,
        requests_after_shutdown_fail_typed,
        closed_file_is_bad_file,
        file_of_another_engine_is_bad_file,
        write_to_read_only_file_is_typed,
        read_from_write_only_file_is_typed,
        huge_length_is_capped_at_io_bytes_max,
        overflowing_offsets_are_out_of_range,
        open_errors_are_typed,
        create_new_refuses_an_existing_file_and_mode_sets_permissions,
        sync_dir_syncs_a_directory_through_the_engine,
        adopt_takes_over_a_descriptor_opened_elsewhere,
        adopt_refuses_descriptors_that_do_not_match_typed,
        allocate_reserves_extends_and_punches,
        allocate_zero_range_zeroes_and_extends,
        set_len_cuts_and_extends_with_zeros,
        metadata_reports_length_blocks_and_times,
        space_management_runs_through_the_queue,
        space_management_refuses_bad_input_typed,
        zero_length_transfers_succeed,
        buffer_comes_back_on_every_error,
        strict_mode_rejects_overlap_in_flight,
        caller_buffers_work_through_io_buf,
        pool_buffers_work_with_direct_io,
        metrics_count_operations_bytes_and_errors,
        direct_read_exact_across_an_unaligned_eof_reports_the_count,
        long_exact_reads_split_at_an_aligned_boundary,
        fifos_are_refused_at_open,
        procfs_files_can_be_read,
        a_queue_moved_between_threads_keeps_working,
        a_dropped_file_lets_go_of_its_storage,
        a_closed_file_is_let_go_of_by_its_queues,
        strict_mode_claims_nothing_for_a_future_dropped_while_waiting,
        a_full_submission_queue_loses_no_request,
        vectored_writes_and_reads_round_trip,
        vectored_direct_io_round_trips_through_the_queue,
        vectored_requests_beyond_iov_max_are_split,
        vectored_read_across_eof_fills_in_order_and_reports_the_count,
        short_vectored_transfers_resume_exactly,
        every_vectored_buffer_is_checked_for_alignment,
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Opens a new file with O_DIRECT and at least `align` alignment, or skips.
fn direct_file<E: Backend>(
    h: &Harness<E>,
    engine: &E,
    contents: &[u8],
    align: u32,
) -> Result<File, Skip> {
    let path = h.path();
    std::fs::write(&path, contents).expect("create file");
    let options = rw().direct(true).align_min(align);
    match engine.open(&path, &options) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            Err(Skip(format!("the scratch filesystem has no O_DIRECT: {e}")))
        }
        Err(e) => panic!("open with O_DIRECT: {e}"),
    }
}

fn requires_hook<E: Backend>(engine: &E) -> CaseResult {
    if engine.capabilities().fault_hook {
        Ok(())
    } else {
        Err(Skip(format!("backend {} has no fault hook", engine.name())))
    }
}

fn complete<E: Backend>(engine: &E, request: Request) -> Completion {
    block_on(engine.submit(request))
}

fn expect_kind(completion: &Completion, kind: ErrorKind, what: &str) {
    match &completion.result {
        Ok(n) => panic!("{what}: expected {kind:?}, got Ok({n})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Contract point 1: geometry and alignment

/// Geometry is probed per file and internally consistent.
pub fn geometry_is_probed_and_sane<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    let g = file.geometry();
    assert!(g.mem_align.is_power_of_two(), "mem_align power of two: {g}");
    assert!(
        g.offset_align.is_power_of_two(),
        "offset_align power of two: {g}"
    );
    assert!(
        g.read_offset_align <= g.offset_align,
        "read alignment at most write alignment: {g}"
    );
    assert!(
        g.physical_block_size >= g.logical_block_size,
        "physical >= logical: {g}"
    );
    assert_eq!(g.io_bytes_max, IO_BYTES_MAX, "io_bytes_max: {g}");
    Ok(())
}

/// The geometry an engine reports is the one the shared probe gives for the same file, so
/// every backend reports the same geometry.
pub fn geometry_matches_the_reference_probe<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    for direct in [false, true] {
        let path = h.path();
        std::fs::write(&path, b"x").expect("create");
        let options = rw().direct(direct);
        let file = match engine.open(&path, &options) {
            Ok(file) => file,
            Err(e) if direct && e.kind() == ErrorKind::Unsupported => continue,
            Err(e) => panic!("open: {e}"),
        };
        let (_, reference) = engine_core::raw::open_std(&path, &options).expect("reference open");
        assert_eq!(*file.geometry(), reference, "geometry direct={direct}");
        let std = std::fs::File::open(&path).expect("std open");
        let probed = Geometry::probe(std::os::fd::AsFd::as_fd(&std));
        assert_eq!(
            file.geometry().offset_align,
            probed.offset_align,
            "offset alignment"
        );
        assert_eq!(
            file.geometry().mem_align,
            probed.mem_align,
            "memory alignment"
        );
    }
    Ok(())
}

/// Submits a write and a read that break `target` at alignment `align`; both must fail with
/// `Misaligned` before reaching the file.
fn misaligned<E: Backend>(h: &Harness<E>, align: u32, target: AlignTarget) -> CaseResult {
    let engine = h.engine();
    let a = align as usize;
    let original = pattern(4 * a, 1);
    let file = direct_file(h, &engine, &original, align)?;
    let g = *file.geometry();
    if g.offset_align != align || g.mem_align != align {
        return Err(Skip(format!(
            "this device needs alignment {} > {align}: {g}",
            g.offset_align
        )));
    }
    for op in [Op::Write, Op::Read] {
        // Each shape breaks exactly one rule and keeps the other two.
        let (offset, mut buffer) = match target {
            AlignTarget::Memory => (a as u64, misaligned_buf(a, a, a / 2)),
            AlignTarget::Offset => (a as u64 / 2, AlignedBuf::zeroed(a, a).expect("buf")),
            AlignTarget::Length => (0, AlignedBuf::zeroed(a + a / 2, a).expect("buf")),
        };
        buffer.fill(0xEE);
        let request = match op {
            Op::Write => Request::write(&file, offset, buffer, 9),
            _ => Request::read(&file, offset, buffer, 9),
        };
        let completion = complete(&engine, request);
        let what = format!("{op:?} with misaligned {target:?} at {align}");
        expect_kind(&completion, ErrorKind::Misaligned, &what);
        let error = completion.result.as_ref().expect_err("error");
        let m = error.misalignment().expect("misalignment details");
        assert_eq!(m.target, target, "{what}: target");
        assert_eq!(m.required, u64::from(align), "{what}: required");
        assert_eq!(error.offset(), Some(offset), "{what}: offset in error");
        assert!(error.length().is_some(), "{what}: length in error");
        assert_eq!(
            error.file().map(|f| f.id),
            Some(file.id()),
            "{what}: file in error"
        );
        assert!(completion.buf.is_some(), "{what}: buffer handed back");
    }
    assert_eq!(h.contents(&file), original, "nothing reached the file");
    assert_eq!(engine.metrics().write.bytes, 0, "no bytes written");
    Ok(())
}

/// Misaligned memory under O_DIRECT at 512 is rejected before submission.
pub fn misaligned_memory_rejected_at_512<E: Backend>(h: &Harness<E>) -> CaseResult {
    misaligned(h, 512, AlignTarget::Memory)
}
/// Misaligned offset under O_DIRECT at 512 is rejected before submission.
pub fn misaligned_offset_rejected_at_512<E: Backend>(h: &Harness<E>) -> CaseResult {
    misaligned(h, 512, AlignTarget::Offset)
}
/// Misaligned length under O_DIRECT at 512 is rejected before submission.
pub fn misaligned_length_rejected_at_512<E: Backend>(h: &Harness<E>) -> CaseResult {
    misaligned(h, 512, AlignTarget::Length)
}
/// Misaligned memory under O_DIRECT at 4096 is rejected before submission.
pub fn misaligned_memory_rejected_at_4096<E: Backend>(h: &Harness<E>) -> CaseResult {
    misaligned(h, 4096, AlignTarget::Memory)
}
/// Misaligned offset under O_DIRECT at 4096 is rejected before submission.
pub fn misaligned_offset_rejected_at_4096<E: Backend>(h: &Harness<E>) -> CaseResult {
    misaligned(h, 4096, AlignTarget::Offset)
}
/// Misaligned length under O_DIRECT at 4096 is rejected before submission.
pub fn misaligned_length_rejected_at_4096<E: Backend>(h: &Harness<E>) -> CaseResult {
    misaligned(h, 4096, AlignTarget::Length)
}

/// Aligned O_DIRECT writes and reads round-trip.
pub fn aligned_direct_io_round_trips<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = direct_file(h, &engine, b"", 4096)?;
    let data = pattern(3 * 4096, 2);
    write_all(&engine, &file, 4096, &data, 4096);
    assert_eq!(
        read_exact(&engine, &file, 4096, data.len(), 4096),
        data,
        "read back"
    );
    let on_disk = h.contents(&file);
    assert_eq!(&on_disk[4096..], &data[..], "on disk");
    assert!(
        on_disk[..4096].iter().all(|&b| b == 0),
        "hole before the write"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contract point 2: end of file

const FILE_LEN: usize = 10_000;

fn eof_file<E: Backend>(h: &Harness<E>, engine: &E) -> (File, Vec<u8>) {
    let data = pattern(FILE_LEN, 3);
    (h.file(engine, &data, &rw()), data)
}

fn read_at<E: Backend>(engine: &E, file: &File, offset: u64, len: usize) -> (usize, AlignedBuf) {
    let (result, buf) =
        block_on(engine.read_at(file, offset, AlignedBuf::zeroed(len, 8).expect("buf")));
    (result.expect("read_at"), buf)
}

/// A read at EOF-1 returns exactly one byte.
pub fn read_at_eof_minus_one_returns_one_byte<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, data) = eof_file(h, &engine);
    let (n, buf) = read_at(&engine, &file, FILE_LEN as u64 - 1, 4096);
    assert_eq!(n, 1, "bytes read at EOF-1");
    assert_eq!(
        buf.as_slice(),
        &data[FILE_LEN - 1..],
        "the last byte, and the length is the count"
    );
    Ok(())
}

/// A read at EOF returns 0.
pub fn read_at_eof_returns_zero<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, _) = eof_file(h, &engine);
    let (n, buf) = read_at(&engine, &file, FILE_LEN as u64, 4096);
    assert_eq!(n, 0, "bytes read at EOF");
    assert!(buf.is_empty(), "no padding");
    Ok(())
}

/// A read a block past EOF returns 0.
pub fn read_past_eof_by_a_block_returns_zero<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, _) = eof_file(h, &engine);
    let (n, _) = read_at(&engine, &file, FILE_LEN as u64 + 4096, 4096);
    assert_eq!(n, 0, "bytes read at EOF+block");
    Ok(())
}

/// A read across EOF returns the bytes up to EOF and nothing more.
pub fn read_across_eof_returns_bytes_up_to_eof<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, data) = eof_file(h, &engine);
    let (n, buf) = read_at(&engine, &file, 8192, 4096);
    assert_eq!(n, FILE_LEN - 8192, "bytes read across EOF");
    assert_eq!(buf.as_slice(), &data[8192..], "bytes up to EOF");
    Ok(())
}

/// Under O_DIRECT, an aligned read across an unaligned EOF returns the bytes up to EOF.
pub fn direct_read_across_eof_returns_bytes_up_to_eof<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let data = pattern(2 * 4096 + 100, 4);
    let file = direct_file(h, &engine, &data, 4096)?;
    let (result, buf) =
        block_on(engine.read_at(&file, 8192, AlignedBuf::zeroed(4096, 4096).expect("buf")));
    assert_eq!(
        result.expect("direct read"),
        100,
        "bytes read across EOF under O_DIRECT"
    );
    assert_eq!(buf.as_slice(), &data[8192..], "the tail");
    Ok(())
}

/// `read_exact_at` across EOF fails with UnexpectedEof and says how much it read.
pub fn read_exact_reports_unexpected_eof_with_count<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, data) = eof_file(h, &engine);
    let (result, buf) =
        block_on(engine.read_exact_at(&file, 8000, AlignedBuf::zeroed(4096, 8).expect("buf")));
    let error = result.expect_err("EOF first");
    assert_eq!(error.kind(), ErrorKind::UnexpectedEof, "{error}");
    assert!(
        error.message().contains("2000 of 4096"),
        "count in message: {error}"
    );
    assert_eq!(buf.as_slice(), &data[8000..], "buffer holds what was read");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contract point 6: read your writes

/// A completed write is visible to every later read.
pub fn read_your_writes<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    for i in 0..16u64 {
        let data = pattern(1000 + i as usize, i);
        write_all(&engine, &file, i * 5000, &data, 8);
        assert_eq!(
            read_exact(&engine, &file, i * 5000, data.len(), 8),
            data,
            "write {i}"
        );
    }
    Ok(())
}

/// An overwrite of the middle of a file changes exactly that range.
pub fn overwrite_in_the_middle_is_visible<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let mut expected = pattern(8192, 5);
    let file = h.file(&engine, &expected, &rw());
    let patch = pattern(1000, 6);
    write_all(&engine, &file, 3000, &patch, 1);
    expected[3000..4000].copy_from_slice(&patch);
    assert_eq!(
        read_exact(&engine, &file, 0, 8192, 1),
        expected,
        "through the engine"
    );
    assert_eq!(h.contents(&file), expected, "through std");
    Ok(())
}

/// A write past EOF extends the file and the gap reads as zeros.
pub fn write_past_eof_leaves_a_zero_hole<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"abc", &rw());
    write_all(&engine, &file, 10_000, b"xyz", 1);
    let all = read_exact(&engine, &file, 0, 10_003, 1);
    assert_eq!(&all[..3], b"abc");
    assert!(
        all[3..10_000].iter().all(|&b| b == 0),
        "hole reads as zeros"
    );
    assert_eq!(&all[10_000..], b"xyz");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contract point 2: short transfers; point 3: retries and errors

/// Short reads are resubmitted by `read_exact_at` until the buffer is full.
pub fn short_reads_are_looped_by_read_exact<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Read).then_some(FaultAction::Short(1000)));
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let data = pattern(8192, 7);
    let file = h.file(&engine, &data, &rw());
    assert_eq!(read_exact(&engine, &file, 0, 8192, 8), data, "looped reads");
    let reads: Vec<u64> = hook
        .calls()
        .iter()
        .filter(|c| c.op == Op::Read)
        .map(|c| c.offset)
        .collect();
    assert_eq!(
        reads,
        (0..9).map(|i| i * 1000).collect::<Vec<u64>>(),
        "resubmitted at each remainder"
    );
    Ok(())
}

/// Short writes are resubmitted by `write_all_at` until everything is written.
pub fn short_writes_are_looped_by_write_all<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Write).then_some(FaultAction::Short(3000)));
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    let data = pattern(10_000, 8);
    write_all(&engine, &file, 0, &data, 8);
    assert_eq!(h.contents(&file), data, "all bytes on disk");
    let writes = hook.calls().iter().filter(|c| c.op == Op::Write).count();
    assert_eq!(writes, 4, "3000 + 3000 + 3000 + 1000");
    Ok(())
}

/// A single `read_at` may return fewer bytes than asked; that is not an error.
pub fn single_read_returns_short_count<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Read).then_some(FaultAction::Short(100)));
    let engine = h.engine_with_hook(hook);
    requires_hook(&engine)?;
    let (file, data) = eof_file(h, &engine);
    let (n, buf) = read_at(&engine, &file, 0, 4096);
    assert_eq!(n, 100, "short count");
    assert_eq!(buf.as_slice(), &data[..100], "buffer length is the count");
    Ok(())
}

/// A write that makes no progress ends `write_all_at` with WriteZero, never a loop.
pub fn write_of_zero_bytes_is_write_zero<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Write).then_some(FaultAction::Short(0)));
    let engine = h.engine_with_hook(hook);
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    let (result, buf) = block_on(engine.write_all_at(&file, 0, buf(b"data", 1)));
    let error = result.expect_err("no progress");
    assert_eq!(error.kind(), ErrorKind::WriteZero, "{error}");
    assert_eq!(buf.as_slice(), b"data", "buffer handed back intact");
    Ok(())
}

fn transient_retried<E: Backend>(h: &Harness<E>, errno: i32) -> CaseResult {
    let hook = Hook::new(move |c| (c.attempt < 2).then_some(FaultAction::Fail(errno)));
    let engine = h.engine_with_hook(hook);
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    write_all(&engine, &file, 0, b"retried", 1);
    assert_eq!(read_exact(&engine, &file, 0, 7, 1), b"retried");
    block_on(engine.sync_data(&file)).expect("sync retried");
    let m = engine.metrics();
    assert_eq!(
        (m.write.retries, m.read.retries, m.sync_data.retries),
        (2, 2, 2),
        "two retries each"
    );
    assert_eq!(
        m.write.errors + m.read.errors + m.sync_data.errors,
        0,
        "no errors surfaced"
    );
    Ok(())
}

/// EINTR is retried inside the engine and never surfaces.
pub fn eintr_is_retried_inside_the_engine<E: Backend>(h: &Harness<E>) -> CaseResult {
    transient_retried(h, libc::EINTR)
}

/// EAGAIN is retried inside the engine and never surfaces.
pub fn eagain_is_retried_inside_the_engine<E: Backend>(h: &Harness<E>) -> CaseResult {
    transient_retried(h, libc::EAGAIN)
}

/// EIO on a read surfaces once, typed, with op, file, offset, length and errno.
pub fn eio_on_read_surfaces_once_with_context<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Read).then_some(FaultAction::Fail(libc::EIO)));
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let (file, _) = eof_file(h, &engine);
    let (result, _) =
        block_on(engine.read_at(&file, 512, AlignedBuf::zeroed(1024, 8).expect("buf")));
    let error = result.expect_err("EIO");
    assert_eq!(error.kind(), ErrorKind::Io, "{error}");
    assert_eq!(error.op(), engine_core::Op::Read);
    assert_eq!(
        (error.offset(), error.length()),
        (Some(512), Some(1024)),
        "range: {error}"
    );
    assert_eq!(error.raw_os_error(), Some(libc::EIO));
    assert_eq!(error.file().map(|f| f.id), Some(file.id()));
    assert_eq!(hook.calls().len(), 1, "not retried");
    assert_eq!(engine.metrics().read.errors, 1, "counted once");
    let io: std::io::Error = error.into();
    assert!(
        io.to_string().contains("offset 512"),
        "context kept in io::Error: {io}"
    );
    Ok(())
}

/// ENOSPC on a write is its own kind.
pub fn enospc_on_write_is_no_space<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Write).then_some(FaultAction::Fail(libc::ENOSPC)));
    let engine = h.engine_with_hook(hook);
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    let (result, _) = block_on(engine.write_all_at(&file, 0, buf(b"full", 1)));
    assert_eq!(result.expect_err("ENOSPC").kind(), ErrorKind::NoSpace);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contract points 4 and 5: syncs

/// `sync_data` and `sync_all` reach the backend as fdatasync and fsync respectively.
pub fn sync_data_and_sync_all_are_distinct_operations<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|_| None);
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    block_on(engine.sync_data(&file)).expect("sync_data");
    block_on(engine.sync_all(&file)).expect("sync_all");
    block_on(engine.sync_all(&file)).expect("sync_all");
    let kinds: Vec<Op> = hook.calls().iter().map(|c| c.op).collect();
    assert_eq!(
        kinds,
        [Op::SyncData, Op::SyncAll, Op::SyncAll],
        "operations issued"
    );
    let m = engine.metrics();
    assert_eq!((m.sync_data.ops, m.sync_all.ops), (1, 2), "counted apart");
    Ok(())
}

/// Syncs of O_DIRECT files reach the OS too: a direct write's completion is not durability
/// (the device cache may still hold it).
pub fn syncs_on_direct_files_reach_the_os<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|_| None);
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let file = direct_file(h, &engine, b"", 4096)?;
    write_all(&engine, &file, 0, &pattern(4096, 21), 4096);
    block_on(engine.sync_data(&file)).expect("sync_data");
    block_on(engine.sync_all(&file)).expect("sync_all");
    let syncs: Vec<Op> = hook
        .calls()
        .iter()
        .filter(|c| c.op.is_sync())
        .map(|c| c.op)
        .collect();
    assert_eq!(
        syncs,
        [Op::SyncData, Op::SyncAll],
        "both syncs reached the OS"
    );
    Ok(())
}

/// Syncs after completed writes succeed and leave the data readable.
pub fn sync_after_writes_succeeds<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    let data = pattern(20_000, 9);
    write_all(&engine, &file, 0, &data, 1);
    block_on(engine.sync_data(&file)).expect("sync_data");
    block_on(engine.sync_all(&file)).expect("sync_all");
    assert_eq!(h.contents(&file), data);
    Ok(())
}

fn fail_first_sync() -> Arc<Hook> {
    let failed = AtomicU32::new(0);
    Hook::new(move |c| {
        (c.op.is_sync() && failed.fetch_add(1, Ordering::Relaxed) == 0)
            .then_some(FaultAction::Fail(libc::EIO))
    })
}

/// After a failed sync, every later sync on that file fails as poisoned, carrying the
/// original errno; the kernel is not even asked (a later success would re-acknowledge lost
/// data).
pub fn failed_sync_poisons_every_later_sync<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = fail_first_sync();
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    write_all(&engine, &file, 0, b"lost?", 1);
    let first = block_on(engine.sync_data(&file)).expect_err("injected failure");
    assert_eq!(
        first.kind(),
        ErrorKind::Io,
        "first failure keeps its kind: {first}"
    );
    for (i, sync_all) in [false, true, false].into_iter().enumerate() {
        let result = if sync_all {
            block_on(engine.sync_all(&file))
        } else {
            block_on(engine.sync_data(&file))
        };
        let error = result.expect_err("poisoned");
        assert_eq!(
            error.kind(),
            ErrorKind::Poisoned,
            "sync {i} after the failure: {error}"
        );
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "original errno");
    }
    assert_eq!(
        hook.calls().iter().filter(|c| c.op.is_sync()).count(),
        1,
        "later syncs never reached the OS"
    );
    // Reads and writes still work: only syncs are poisoned.
    write_all(&engine, &file, 0, b"still", 1);
    Ok(())
}

/// Reopening the file gives a fresh, unpoisoned handle.
pub fn reopening_clears_the_poison<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine_with_hook(fail_first_sync());
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    block_on(engine.sync_data(&file)).expect_err("injected failure");
    engine.close(&file).expect("close");
    let reopened = engine.open(file.path(), &rw()).expect("reopen");
    block_on(engine.sync_data(&reopened)).expect("fresh handle syncs");
    Ok(())
}

/// A failed write on an O_DSYNC file poisons later syncs: its data may be lost.
pub fn failed_dsync_write_poisons_the_file<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Write).then_some(FaultAction::Fail(libc::EIO)));
    let engine = h.engine_with_hook(hook);
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw().dsync(true));
    let (result, _) = block_on(engine.write_at(&file, 0, buf(b"d", 1)));
    assert_eq!(result.expect_err("EIO").kind(), ErrorKind::Io);
    let error = block_on(engine.sync_all(&file)).expect_err("poisoned");
    assert_eq!(error.kind(), ErrorKind::Poisoned, "{error}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batches and queues; contract point 7

/// A batch yields one completion per request, in request order, each with its own result.
pub fn batch_returns_one_result_per_request_in_order<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, data) = eof_file(h, &engine);
    let closed = h.file(&engine, b"", &rw());
    engine.close(&closed).expect("close");
    let requests = vec![
        Request::read(&file, 0, AlignedBuf::zeroed(100, 8).expect("buf"), 10),
        Request::write(&file, 5_000, buf(b"tail", 1), 11),
        Request::read(&closed, 0, AlignedBuf::zeroed(8, 8).expect("buf"), 12),
        Request::sync_data(&file, 13),
        Request::read(
            &file,
            u64::MAX - 1,
            AlignedBuf::zeroed(8, 8).expect("buf"),
            14,
        ),
        Request::read(
            &file,
            FILE_LEN as u64,
            AlignedBuf::zeroed(8, 8).expect("buf"),
            15,
        ),
    ];
    let completions = block_on(engine.submit_batch(requests));
    let tags: Vec<u64> = completions.iter().map(|c| c.user_data).collect();
    assert_eq!(tags, [10, 11, 12, 13, 14, 15], "one per request, in order");
    assert_eq!(completions[0].result.as_ref().ok(), Some(&100));
    assert_eq!(completions[0].buf.as_deref(), Some(&data[..100]));
    assert_eq!(completions[1].result.as_ref().ok(), Some(&4));
    expect_kind(
        &completions[2],
        ErrorKind::BadFile,
        "closed file in a batch",
    );
    assert!(completions[3].result.is_ok(), "sync in a batch");
    expect_kind(
        &completions[4],
        ErrorKind::OutOfRange,
        "overflow in a batch",
    );
    assert_eq!(
        completions[5].result.as_ref().ok(),
        Some(&0),
        "EOF in a batch"
    );
    Ok(())
}

/// An empty batch completes at once with nothing.
pub fn empty_batch_returns_nothing<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    assert!(block_on(engine.submit_batch(Vec::new())).is_empty());
    Ok(())
}

/// A full queue hands the request back untouched instead of failing or growing.
pub fn queue_hands_back_the_request_when_full<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine_with(|c| c.queue_depth = 4);
    let (file, _) = eof_file(h, &engine);
    let mut queue = engine.queue().expect("queue");
    assert_eq!(queue.depth(), 4);
    for i in 0..4 {
        queue
            .push(Request::read(
                &file,
                0,
                AlignedBuf::zeroed(16, 8).expect("buf"),
                i,
            ))
            .expect("room");
    }
    let back = queue
        .push(Request::read(
            &file,
            0,
            AlignedBuf::zeroed(16, 8).expect("buf"),
            99,
        ))
        .expect_err("full");
    assert_eq!(back.user_data(), 99, "the same request comes back");
    assert_eq!(queue.in_flight(), 4);
    let mut out = Vec::new();
    queue.wait(1, &mut out).expect("wait");
    assert!(!out.is_empty(), "at least one completion");
    queue.push(back).expect("room after reaping");
    while queue.in_flight() > 0 {
        queue.wait(1, &mut out).expect("wait");
    }
    assert_eq!(out.len(), 5, "every request completed");
    Ok(())
}

/// Ten times the depth of mixed requests through `push_or_wait`: in flight never exceeds the
/// depth, nothing is lost or duplicated, and every buffer comes back.
pub fn queue_yields_one_completion_per_push<E: Backend>(h: &Harness<E>) -> CaseResult {
    let depth = 8;
    let engine = h.engine_with(|c| c.queue_depth = depth);
    let file = h.file(&engine, &pattern(64 * 512, 10), &rw());
    let mut queue = engine.queue().expect("queue");
    let mut out = Vec::with_capacity(depth);
    let total = 10 * depth as u64;
    for i in 0..total {
        let offset = (i % 64) * 512;
        let request = match i % 3 {
            0 => Request::read(&file, offset, AlignedBuf::zeroed(512, 512).expect("buf"), i),
            1 => Request::write(&file, offset, buf(&pattern(512, i), 512), i),
            _ => Request::sync_data(&file, i),
        };
        queue.push_or_wait(request, &mut out).expect("push");
        assert!(
            queue.in_flight() <= depth,
            "in flight {} > depth",
            queue.in_flight()
        );
        queue.submit().expect("submit");
    }
    while queue.in_flight() > 0 {
        queue.wait(queue.in_flight(), &mut out).expect("wait");
    }
    let mut seen: Vec<u64> = out.iter().map(|c| c.user_data).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "each request exactly once"
    );
    for c in &out {
        assert!(c.result.is_ok(), "request {}: {:?}", c.user_data, c.result);
        assert_eq!(
            c.buf.is_some(),
            c.op != Op::SyncData,
            "buffer back for {}",
            c.user_data
        );
    }
    Ok(())
}

/// Invalid requests pushed on a queue complete with their typed error, once each.
pub fn queue_completes_invalid_requests_with_errors<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let read_only = h.file(&engine, b"ro", &OpenOptions::new().read(true));
    let mut queue = engine.queue().expect("queue");
    queue
        .push(Request::write(&read_only, 0, buf(b"x", 1), 1))
        .expect("room");
    queue
        .push(Request::read(
            &read_only,
            u64::MAX,
            AlignedBuf::zeroed(1, 1).expect("buf"),
            2,
        ))
        .expect("room");
    queue
        .push(Request::read(
            &read_only,
            0,
            AlignedBuf::zeroed(2, 1).expect("buf"),
            3,
        ))
        .expect("room");
    let mut out = Vec::new();
    queue.wait(3, &mut out).expect("wait");
    out.sort_by_key(|c| c.user_data);
    assert_eq!(out.len(), 3);
    expect_kind(
        &out[0],
        ErrorKind::ReadOnly,
        "write to read-only through the queue",
    );
    expect_kind(&out[1], ErrorKind::OutOfRange, "overflow through the queue");
    assert_eq!(out[2].result.as_ref().ok(), Some(&2));
    assert_eq!(queue.in_flight(), 0);
    Ok(())
}

/// `wait` never waits for more completions than are in flight: it cannot hang.
pub fn queue_wait_is_bounded_by_in_flight<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, _) = eof_file(h, &engine);
    let mut queue = engine.queue().expect("queue");
    let mut out = Vec::new();
    assert_eq!(
        queue.wait(10, &mut out).expect("empty wait"),
        0,
        "nothing in flight"
    );
    queue
        .push(Request::read(
            &file,
            0,
            AlignedBuf::zeroed(8, 8).expect("buf"),
            1,
        ))
        .expect("room");
    queue
        .push(Request::read(
            &file,
            8,
            AlignedBuf::zeroed(8, 8).expect("buf"),
            2,
        ))
        .expect("room");
    assert_eq!(
        queue.wait(100, &mut out).expect("wait"),
        2,
        "both, then return"
    );
    assert_eq!(queue.poll(&mut out).expect("poll"), 0, "nothing more");
    Ok(())
}

/// With depth 2, 64 concurrent async requests all complete: submitters wait, never fail.
pub fn async_submitters_wait_when_the_queue_is_full<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine_with(|c| c.queue_depth = 2);
    let file = h.file(&engine, b"", &rw());
    let requests: Vec<Request> = (0..64u64)
        .map(|i| Request::write(&file, i * 100, buf(&pattern(100, i), 1), i))
        .collect();
    let completions = block_on(engine.submit_batch(requests));
    assert_eq!(completions.len(), 64);
    for c in &completions {
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&100),
            "request {}",
            c.user_data
        );
    }
    let on_disk = h.contents(&file);
    for i in 0..64usize {
        assert_eq!(
            &on_disk[i * 100..][..100],
            &pattern(100, i as u64)[..],
            "block {i}"
        );
    }
    Ok(())
}

/// Many requests in flight complete in whatever order the device finishes them, each with
/// its own data: an fsync of 32 MiB of dirty data submitted first finishes after small cached
/// reads submitted behind it.
pub fn many_in_flight_complete_out_of_order<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let data = pattern(16, 11);
    let file = h.file(&engine, &data, &rw());
    // Dirty the page cache so the fsync has real work.
    std::os::unix::fs::FileExt::write_all_at(file.std(), &vec![7u8; 32 << 20], 1 << 20)
        .expect("dirty data");
    let mut queue = engine.queue().expect("queue");
    queue.push(Request::sync_all(&file, 100)).expect("room");
    for i in 0..15u64 {
        queue
            .push(Request::read(
                &file,
                i,
                AlignedBuf::zeroed(1, 1).expect("buf"),
                i,
            ))
            .expect("room");
    }
    let mut out = Vec::new();
    while queue.in_flight() > 0 {
        queue.wait(1, &mut out).expect("wait");
    }
    let order: Vec<u64> = out.iter().map(|c| c.user_data).collect();
    for c in &out {
        assert!(c.result.is_ok(), "request {}: {:?}", c.user_data, c.result);
        if c.user_data < 100 {
            let byte = c.buf.as_ref().expect("buf")[0];
            assert_eq!(
                byte, data[c.user_data as usize],
                "request {} got its own byte",
                c.user_data
            );
        }
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [(0..15).collect::<Vec<u64>>(), vec![100]].concat(),
        "each request once"
    );
    if engine.capabilities().submit_may_block {
        // A backend that completes each request at submit cannot reorder; the data checks
        // above still apply.
        return Ok(());
    }
    assert_ne!(
        order.first(),
        Some(&100),
        "the fsync finished before every read: {order:?}"
    );
    Ok(())
}

/// Runs `future` to completion the way an executor other than `block_on` does: polled on
/// this thread, woken by an unpark from whichever thread completes it.
fn on_foreign_executor<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A lost wake-up hangs here, and the case fails on its time limit.
        std::thread::park();
    }
}

/// Futures polled by executors that do not lend their thread to the engine (woken from the
/// engine's reaper or its worker threads) complete with the right data, while a `block_on`
/// thread drives its own futures on the same engine at the same time.
pub fn futures_polled_by_other_executors_complete<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    const BLOCK: usize = 4096;
    const BLOCKS: usize = 64;
    let data = pattern(BLOCK * BLOCKS, 31);
    // O_DIRECT where the filesystem has it, so no read completes at submit (a cached read
    // can, on the thread that polls it).
    let file = match direct_file(h, &engine, &data, 4096) {
        Ok(file) => file,
        Err(_) => h.file(&engine, &data, &rw()),
    };
    let read_back = |block: usize| {
        let engine = &engine;
        let file = &file;
        let offset = block % BLOCKS * BLOCK;
        let expected = &data[offset..offset + BLOCK];
        async move {
            let zeroed = buf(&[0; BLOCK], 4096);
            let (read, got) = engine.read_at(file, offset as u64, zeroed).await;
            assert_eq!(
                read.as_ref().ok(),
                Some(&BLOCK),
                "read at {offset}: {read:?}"
            );
            assert!(got.as_slice() == expected, "the bytes at {offset}");
        }
    };
    std::thread::scope(|scope| {
        let foreign: Vec<_> = (0..3)
            .map(|t| {
                let read_back = &read_back;
                scope.spawn(move || {
                    for i in 0..64 {
                        on_foreign_executor(read_back(t * 64 + i));
                    }
                })
            })
            .collect();
        for round in 0..16 {
            let futures = (0..8).map(|i| read_back(round * 8 + i)).collect();
            block_on(engine_core::join_all(futures));
        }
        for thread in foreign {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contract points 8 and 9: drop and shutdown

/// Polls a future once, so it has started, then returns it still pending or its output.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Dirties `bytes` of the page cache behind `file` (through std), so that a sync of it holds
/// the kernel for a while.
fn dirty(file: &File, bytes: usize) {
    std::os::unix::fs::FileExt::write_all_at(file.std(), &vec![7u8; bytes], 1 << 20)
        .expect("dirty data");
}

/// A large write future dropped after its first poll (the write in the kernel, or queued for a
/// worker) still completes its write, with the buffer owned by the engine until then; the
/// engine keeps working.
pub fn dropped_future_keeps_its_buffer_until_completion<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    // O_DIRECT where the filesystem has it: the kernel then reads the buffer itself, late.
    let file = match direct_file(h, &engine, b"", 4096) {
        Ok(file) => file,
        Err(_) => h.file(&engine, b"", &rw()),
    };
    const LEN: usize = 16 << 20;
    let data = pattern(LEN, 12);
    let mut started = 0;
    for i in 0..2u64 {
        // Started and then dropped: the request is with the engine, the future is gone.
        if poll_once(engine.write_at(&file, i * LEN as u64, buf(&data, 4096))).is_none() {
            started += 1;
        }
    }
    // Churn the allocator: if a buffer were freed early, these would reuse its memory.
    let churn: Vec<AlignedBuf> = (0..8).map(|_| buf(&[0xAA; LEN / 4], 4096)).collect();
    engine.shutdown();
    drop(churn);
    let on_disk = h.contents(&file);
    assert_eq!(
        on_disk.len(),
        2 * LEN,
        "every started write completed before shutdown returned ({started} were in flight when dropped)"
    );
    for i in 0..2 {
        assert!(on_disk[i * LEN..][..LEN] == data[..], "write {i} intact");
    }
    Ok(())
}

/// Dropping the engine with requests in the kernel (a big fsync, writes) completes them,
/// joins its threads, and the queue still yields every completion: nothing hangs.
pub fn dropping_the_engine_completes_work_in_flight<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    dirty(&file, 32 << 20);
    let mut queue = engine.queue().expect("queue");
    queue.push(Request::sync_all(&file, 100)).expect("room");
    for i in 0..15u64 {
        queue
            .push(Request::write(&file, i * 8, buf(&i.to_le_bytes(), 8), i))
            .expect("room");
    }
    queue.submit().expect("submit");
    drop(engine);
    let mut out = Vec::new();
    while queue.in_flight() > 0 {
        queue.wait(1, &mut out).expect("wait after engine drop");
    }
    assert_eq!(out.len(), 16, "every request completed");
    for c in &out {
        match &c.result {
            Ok(n) => assert_eq!(*n, if c.user_data == 100 { 0 } else { 8 }),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Shutdown, "only shutdown errors: {e}"),
        }
    }
    // Requests pushed after the engine is gone fail typed, through the same queue.
    queue.push(Request::sync_all(&file, 99)).expect("room");
    let mut late = Vec::new();
    let _ = queue.submit();
    queue.wait(1, &mut late).expect("wait");
    expect_kind(&late[0], ErrorKind::Shutdown, "request after engine drop");
    Ok(())
}

/// Dropping a queue with requests in the kernel (a big fsync, writes) neither hangs nor
/// disturbs the engine, and the writes it held are done.
pub fn dropping_a_queue_with_work_in_flight_is_safe<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    dirty(&file, 32 << 20);
    let mut queue = engine.queue().expect("queue");
    queue.push(Request::sync_all(&file, 100)).expect("room");
    for i in 0..8u64 {
        queue
            .push(Request::write(&file, i, buf(&[i as u8 + 1], 1), i))
            .expect("room");
    }
    queue.submit().expect("submit");
    drop(queue);
    assert_eq!(
        &h.contents(&file)[..8],
        &[1, 2, 3, 4, 5, 6, 7, 8],
        "the dropped queue's writes completed"
    );
    write_all(&engine, &file, 100, b"after", 1);
    assert_eq!(read_exact(&engine, &file, 100, 5, 1), b"after");
    Ok(())
}

/// After shutdown, opening, queue creation and every request fail with Shutdown.
pub fn requests_after_shutdown_fail_typed<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"data", &rw());
    engine.shutdown();
    engine.shutdown();
    let error = engine
        .open(file.path(), &rw())
        .expect_err("open after shutdown");
    assert_eq!(error.kind(), ErrorKind::Shutdown, "{error}");
    assert_eq!(
        engine.queue().err().map(|e| e.kind()),
        Some(ErrorKind::Shutdown),
        "queue after shutdown"
    );
    let (result, buf) = block_on(engine.read_at(&file, 0, AlignedBuf::zeroed(4, 1).expect("buf")));
    assert_eq!(
        result.expect_err("read after shutdown").kind(),
        ErrorKind::Shutdown
    );
    assert_eq!(buf.len(), 4, "buffer handed back");
    let error = block_on(engine.sync_all(&file)).expect_err("sync after shutdown");
    assert_eq!(error.kind(), ErrorKind::Shutdown);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contract point 10: bad handles and arguments

/// A closed handle is a typed error, and so is closing it twice.
pub fn closed_file_is_bad_file<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"data", &rw());
    engine.close(&file).expect("close");
    assert_eq!(
        engine.close(&file).expect_err("twice").kind(),
        ErrorKind::BadFile
    );
    let (result, _) = block_on(engine.read_at(&file, 0, AlignedBuf::zeroed(4, 1).expect("buf")));
    assert_eq!(result.expect_err("read closed").kind(), ErrorKind::BadFile);
    assert_eq!(
        block_on(engine.sync_data(&file))
            .expect_err("sync closed")
            .kind(),
        ErrorKind::BadFile
    );
    Ok(())
}

/// A handle from another engine is refused.
pub fn file_of_another_engine_is_bad_file<E: Backend>(h: &Harness<E>) -> CaseResult {
    let first = h.engine();
    let second = h.engine();
    let file = h.file(&first, b"data", &rw());
    let (result, _) = block_on(second.read_at(&file, 0, AlignedBuf::zeroed(4, 1).expect("buf")));
    assert_eq!(
        result.expect_err("foreign handle").kind(),
        ErrorKind::BadFile
    );
    assert_eq!(
        second.close(&file).expect_err("foreign close").kind(),
        ErrorKind::BadFile
    );
    Ok(())
}

/// A write to a file opened read-only is a typed error and changes nothing.
pub fn write_to_read_only_file_is_typed<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"keep", &OpenOptions::new().read(true));
    let (result, _) = block_on(engine.write_all_at(&file, 0, buf(b"lose", 1)));
    assert_eq!(result.expect_err("read-only").kind(), ErrorKind::ReadOnly);
    assert_eq!(h.contents(&file), b"keep");
    Ok(())
}

/// A read from a file opened write-only is a typed error.
pub fn read_from_write_only_file_is_typed<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"data", &OpenOptions::new().write(true));
    let (result, _) = block_on(engine.read_at(&file, 0, AlignedBuf::zeroed(4, 1).expect("buf")));
    assert_eq!(result.expect_err("write-only").kind(), ErrorKind::BadFile);
    Ok(())
}

/// A request longer than the kernel's single-I/O maximum is split at that maximum (never
/// truncated to 32 bits), and `read_at` returns what exists.
pub fn huge_length_is_capped_at_io_bytes_max<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|_| None);
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let (file, data) = eof_file(h, &engine);
    // 4 GiB + 4 KiB: would be 4 KiB if truncated to u32. Zeroed memory is mapped lazily.
    let len = (4usize << 30) + 4096;
    let huge = match AlignedBuf::zeroed(len, 4096) {
        Ok(b) => b,
        Err(e) => return Err(Skip(format!("cannot reserve {len} bytes here: {e}"))),
    };
    let (result, buf) = block_on(engine.read_at(&file, 0, huge));
    assert_eq!(result.expect("huge read"), FILE_LEN, "bytes up to EOF");
    assert_eq!(&buf[..], &data[..]);
    let lens: Vec<usize> = hook.calls().iter().map(|c| c.len).collect();
    assert_eq!(
        lens,
        [IO_BYTES_MAX as usize],
        "submitted length capped, not truncated"
    );
    Ok(())
}

/// Offsets that overflow, or pass the largest file offset, are OutOfRange before submission.
pub fn overflowing_offsets_are_out_of_range<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    for offset in [u64::MAX, u64::MAX - 3, i64::MAX as u64, i64::MAX as u64 - 2] {
        let (result, _) = block_on(engine.write_at(&file, offset, buf(b"data", 1)));
        let error = result.expect_err("overflow");
        assert_eq!(
            error.kind(),
            ErrorKind::OutOfRange,
            "offset {offset}: {error}"
        );
        assert_eq!(error.offset(), Some(offset));
    }
    assert!(h.contents(&file).is_empty(), "nothing written");
    Ok(())
}

/// Open failures are typed: missing file, no access mode, create without write.
pub fn open_errors_are_typed<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let missing = h.path();
    let error = engine.open(&missing, &rw()).expect_err("missing");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "path in error: {error}"
    );
    let error = engine
        .open(&missing, &OpenOptions::new())
        .expect_err("no mode");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let error = engine
        .open(&missing, &OpenOptions::new().read(true).create(true))
        .expect_err("create read-only");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let error = engine
        .open(&missing, &rw().create(true).align_min(3000))
        .expect_err("bad alignment");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    Ok(())
}

/// `create_new` creates a file that does not exist (with `mode`'s permission bits, less the
/// umask) and refuses one that does with `AlreadyExists`, leaving it untouched; a mode beyond
/// permission bits and `create_new` without write are invalid input.
pub fn create_new_refuses_an_existing_file_and_mode_sets_permissions<E: Backend>(
    h: &Harness<E>,
) -> CaseResult {
    use std::os::unix::fs::PermissionsExt;
    let engine = h.engine();
    let path = h.path();
    let options = rw().create_new(true).mode(0o600);
    let file = engine
        .open(&path, &options)
        .expect("create_new of a new path");
    let (written, _) = block_on(engine.write_all_at(&file, 0, buf(b"first", 8)));
    written.expect("write to the new file");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "permission bits of the created file: {mode:o}"
    );
    let error = engine
        .open(&path, &options)
        .expect_err("create_new of an existing path");
    assert_eq!(error.kind(), ErrorKind::AlreadyExists, "{error}");
    assert_eq!(error.raw_os_error(), Some(libc::EEXIST), "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "path in error: {error}"
    );
    let truncating = rw().create_new(true).truncate(true);
    assert_eq!(
        engine.open(&path, &truncating).map_err(|e| e.kind()).err(),
        Some(ErrorKind::AlreadyExists),
        "create_new wins over truncate"
    );
    assert_eq!(h.contents(&file), b"first", "left untouched");
    let error = engine
        .open(&h.path(), &rw().create(true).mode(0o170_000))
        .expect_err("a file type in mode");
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    let error = engine
        .open(&h.path(), &OpenOptions::new().read(true).create_new(true))
        .expect_err("create_new read-only");
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    Ok(())
}

/// `sync_dir` fsyncs a directory through the engine (counted as a `sync_all`), and refuses a
/// regular file (`InvalidInput`, `ENOTDIR`) and a missing path (`NotFound`) with the path.
pub fn sync_dir_syncs_a_directory_through_the_engine<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let dir = h.path();
    std::fs::create_dir(&dir).expect("scratch directory");
    let file = engine
        .open(&dir.join("new"), &rw().create_new(true))
        .expect("a new file in it");
    block_on(engine.sync_all(&file)).expect("sync of the file");
    let syncs = engine.metrics().sync_all.ops;
    block_on(engine.sync_dir(&dir)).expect("sync of its directory");
    assert_eq!(
        engine.metrics().sync_all.ops,
        syncs + 1,
        "the directory's fsync went through the engine"
    );
    let error = block_on(engine.sync_dir(&dir.join("new"))).expect_err("a regular file");
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    assert_eq!(error.raw_os_error(), Some(libc::ENOTDIR), "{error}");
    assert!(error.to_string().contains("new"), "path in error: {error}");
    let missing = dir.join("missing");
    let error = block_on(engine.sync_dir(&missing)).expect_err("a missing path");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    // The engine is still usable, and no directory handle was left open.
    let (written, _) = block_on(engine.write_all_at(&file, 0, buf(b"after", 8)));
    written.expect("write after sync_dir");
    Ok(())
}

/// Per-write durability: `DSYNC` (`RWF_DSYNC`) and `SYNC_DATA_AFTER` (an fdatasync after the
/// write, inside the request) write the data like a plain write, through both APIs; the sync
/// after the write is part of the write's request, not a separate one.
pub fn durable_writes_complete_written_and_synced<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, &[0u8; 8192], &rw());
    let first = pattern(4096, 71);
    let (result, _) =
        block_on(engine.write_all_at_with(&file, 0, buf(&first, 512), WriteFlags::DSYNC));
    result.expect("a DSYNC write");
    let second = pattern(4096, 73);
    let (result, _) = block_on(engine.write_all_at_with(
        &file,
        4096,
        buf(&second, 512),
        WriteFlags::SYNC_DATA_AFTER | WriteFlags::DSYNC,
    ));
    result.expect("a write followed by its sync");
    let mut expected = first.clone();
    expected.extend_from_slice(&second);
    assert_eq!(h.contents(&file), expected);
    let mut queue = engine.queue().expect("queue");
    let request =
        Request::write(&file, 100, buf(b"queued", 1), 9).with_flags(WriteFlags::SYNC_DATA_AFTER);
    assert_eq!(request.write_flags(), WriteFlags::SYNC_DATA_AFTER);
    queue.push(request).expect("room");
    let mut out = Vec::new();
    queue.wait(1, &mut out).expect("wait");
    assert_eq!(
        out[0].result.as_ref().ok(),
        Some(&6),
        "the write's count, after its sync"
    );
    assert_eq!(&h.contents(&file)[100..106], b"queued");
    let metrics = engine.metrics();
    assert_eq!((metrics.write.ops, metrics.write.bytes), (3, 8198));
    assert_eq!(metrics.sync_data.ops, 0, "the syncs belong to the writes");
    Ok(())
}

/// A durable write that fails poisons the file as a failed sync does: a `DSYNC` write that
/// fails, and a write whose sync after it fails (its error is the sync's, and the file's
/// later syncs fail as poisoned).
pub fn a_failed_durable_write_poisons_the_file<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook = Hook::new(|c| (c.op == Op::Write).then_some(FaultAction::Fail(libc::EIO)));
    let engine = h.engine_with_hook(hook);
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    let (result, _) = block_on(engine.write_all_at_with(&file, 0, buf(b"d", 1), WriteFlags::DSYNC));
    assert_eq!(result.expect_err("EIO").kind(), ErrorKind::Io);
    let error = block_on(engine.sync_data(&file)).expect_err("poisoned");
    assert_eq!(error.kind(), ErrorKind::Poisoned, "{error}");
    drop(engine);
    let engine = h.engine_with_hook(fail_first_sync());
    let file = h.file(&engine, b"", &rw());
    let (result, _) =
        block_on(engine.write_all_at_with(&file, 0, buf(b"then", 1), WriteFlags::SYNC_DATA_AFTER));
    let error = result.expect_err("the sync after the write failed");
    assert_eq!(
        (error.kind(), error.raw_os_error()),
        (ErrorKind::Io, Some(libc::EIO))
    );
    let error = block_on(engine.sync_all(&file)).expect_err("poisoned");
    assert_eq!(error.kind(), ErrorKind::Poisoned, "{error}");
    let (result, _) =
        block_on(engine.write_all_at_with(&file, 0, buf(b"again", 1), WriteFlags::SYNC_DATA_AFTER));
    let error = result.expect_err("refused on a poisoned file");
    assert_eq!(error.kind(), ErrorKind::Poisoned, "{error}");
    Ok(())
}

/// `write_atomic_at` is checked before submission: a buffered file, and a file without
/// atomic-write limits, are refused as unsupported with the limits in the message; where the
/// file has limits, a wrong length or offset is misaligned and a valid write lands whole.
pub fn atomic_writes_are_checked_before_submission<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let buffered = h.file(&engine, &[0u8; 8192], &rw());
    let (result, _) = block_on(engine.write_atomic_at(&buffered, 0, buf(&[1u8; 4096], 4096)));
    let error = result.expect_err("buffered");
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert!(error.to_string().contains("O_DIRECT"), "{error}");
    let direct = direct_file(h, &engine, &[0u8; 65536], 4096)?;
    let g = *direct.geometry();
    let atomic = |offset: u64, len: usize| {
        let data = pattern(len, offset);
        let (result, _) = block_on(engine.write_atomic_at(&direct, offset, buf(&data, 4096)));
        (result, data)
    };
    if g.atomic_write_unit_max == 0 {
        let (result, _) = atomic(0, 4096);
        let error = result.expect_err("no atomic writes here");
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
        assert!(error.to_string().contains("unit min 0, max 0"), "{error}");
        assert_eq!(engine.metrics().write.ops, 2, "refusals are counted");
        assert_eq!(h.contents(&direct), vec![0u8; 65536], "nothing was written");
        return Ok(());
    }
    let unit = g.atomic_write_unit_min.max(4096) as usize;
    let e = atomic(unit as u64, 3 * unit)
        .0
        .expect_err("not a power of two");
    assert_eq!(
        e.misalignment().map(|m| m.target),
        Some(AlignTarget::Length),
        "{e}"
    );
    let e = atomic(unit as u64, 2 * unit)
        .0
        .expect_err("offset not a multiple");
    assert_eq!(
        e.misalignment().map(|m| m.target),
        Some(AlignTarget::Offset),
        "{e}"
    );
    let (result, data) = atomic(2 * unit as u64, 2 * unit);
    result.expect("an atomic write within the limits");
    assert_eq!(&h.contents(&direct)[2 * unit..4 * unit], &data[..]);
    Ok(())
}

/// `adopt` takes over a descriptor opened elsewhere: the geometry is the one `open` probes,
/// reads and writes go through the engine (and its metrics), `direct` is switched on to match
/// the options, and an `O_DSYNC` descriptor is known as one.
pub fn adopt_takes_over_a_descriptor_opened_elsewhere<E: Backend>(h: &Harness<E>) -> CaseResult {
    use std::os::unix::fs::OpenOptionsExt;
    let engine = h.engine();
    let data = pattern(8192, 61);
    let path = h.path();
    std::fs::write(&path, &data).expect("create");
    let opened = |flags: i32| {
        let std = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(&path)
            .expect("open elsewhere");
        std::os::fd::OwnedFd::from(std)
    };
    let file = engine.adopt(opened(0), &rw()).expect("adopt");
    let reference = engine.open(&path, &rw()).expect("open");
    assert_eq!(
        file.geometry(),
        reference.geometry(),
        "probed as open probes"
    );
    assert_eq!(
        std::fs::canonicalize(file.path()).ok(),
        std::fs::canonicalize(&path).ok(),
        "the adopted file names its path"
    );
    assert!(!file.options().is_dsync());
    let (n, read) = read_at(&engine, &file, 1000, 3000);
    assert_eq!(&read[..n], &data[1000..4000]);
    write_all(&engine, &file, 0, b"adopted", 1);
    assert_eq!(&h.contents(&reference)[..7], b"adopted");
    assert_eq!(engine.metrics().read.ops, 1);
    engine.close(&file).expect("close");
    let (result, _) = block_on(engine.read_at(&file, 0, AlignedBuf::zeroed(1, 1).expect("buf")));
    assert_eq!(result.expect_err("closed").kind(), ErrorKind::BadFile);
    let dsync = engine
        .adopt(opened(libc::O_DSYNC), &rw())
        .expect("adopt O_DSYNC");
    assert!(
        dsync.options().is_dsync(),
        "the descriptor's O_DSYNC is known"
    );
    match engine.adopt(opened(0), &rw().direct(true).align_min(4096)) {
        Ok(direct) => {
            assert!(direct.options().is_direct() && direct.enforces_alignment());
            // SAFETY: F_GETFL takes no pointers; the descriptor is open.
            let flags = unsafe { libc::fcntl(direct.raw_fd(), libc::F_GETFL) };
            assert_ne!(flags & libc::O_DIRECT, 0, "O_DIRECT was switched on");
            let buf = AlignedBuf::zeroed(4096, 4096).expect("buf");
            let (result, buf) = block_on(engine.read_exact_at(&direct, 4096, buf));
            result.expect("an aligned direct read");
            assert_eq!(&buf[..], &data[4096..8192]);
            let (result, _) = block_on(engine.read_at(
                &direct,
                512,
                AlignedBuf::zeroed(4096, 4096).expect("buf"),
            ));
            assert_eq!(
                result.expect_err("misaligned").kind(),
                ErrorKind::Misaligned
            );
        }
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            return Err(Skip(format!("the scratch filesystem has no O_DIRECT: {e}")));
        }
        Err(e) => panic!("adopt with O_DIRECT: {e}"),
    }
    Ok(())
}

/// `adopt` refuses, typed, what it cannot honour: an access the descriptor lacks, open-time
/// options, `O_DSYNC` the descriptor lacks, `O_APPEND` (positional writes would append), a
/// FIFO, a closed descriptor.
pub fn adopt_refuses_descriptors_that_do_not_match_typed<E: Backend>(h: &Harness<E>) -> CaseResult {
    use std::os::unix::fs::OpenOptionsExt;
    let engine = h.engine();
    let path = h.path();
    std::fs::write(&path, b"keep").expect("create");
    let fd = |read: bool, write: bool, flags: i32| {
        let std = std::fs::OpenOptions::new()
            .read(read)
            .write(write)
            .custom_flags(flags)
            .open(&path)
            .expect("open elsewhere");
        std::os::fd::OwnedFd::from(std)
    };
    let kind = |result: engine_core::Result<File>| result.expect_err("refused").kind();
    let cases = [
        (
            fd(true, false, 0),
            rw(),
            "a read-only descriptor for writing",
        ),
        (
            fd(false, true, 0),
            OpenOptions::new().read(true),
            "a write-only one for reading",
        ),
        (
            fd(true, true, 0),
            rw().truncate(true),
            "truncate acts at open",
        ),
        (fd(true, true, 0), rw().create(true), "create acts at open"),
        (
            fd(true, true, 0),
            rw().dsync(true),
            "O_DSYNC cannot be added",
        ),
        (fd(true, true, libc::O_APPEND), rw(), "O_APPEND"),
    ];
    for (fd, options, what) in cases {
        assert_eq!(
            kind(engine.adopt(fd, &options)),
            ErrorKind::InvalidInput,
            "{what}"
        );
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"keep",
        "nothing was truncated"
    );
    let fifo = h.path();
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // O_RDWR on a FIFO does not wait for a peer on Linux.
    let fifo_fd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    assert_eq!(
        kind(engine.adopt(fifo_fd.into(), &rw())),
        ErrorKind::Unsupported,
        "a FIFO cannot do positional I/O"
    );
    Ok(())
}

/// `allocate` through the engine: `KeepSize` reserves blocks without changing the length,
/// `Allocate` extends the length with zeros, `PunchHole` frees blocks and reads as zeros
/// without changing the length; each is counted in metrics.
pub fn allocate_reserves_extends_and_punches<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let data = pattern(16384, 41);
    let file = h.file(&engine, &data, &rw());
    let before = block_on(engine.metadata(&file)).expect("metadata");
    block_on(engine.allocate(&file, 0, 1 << 20, AllocateMode::KeepSize)).expect("keep size");
    let reserved = block_on(engine.metadata(&file)).expect("metadata");
    assert_eq!(reserved.len(), 16384, "KeepSize keeps the length");
    assert!(
        reserved.blocks() * 512 >= 1 << 20,
        "1 MiB reserved: {} blocks before, {} after",
        before.blocks(),
        reserved.blocks()
    );
    block_on(engine.allocate(&file, 16384, 16384, AllocateMode::Allocate)).expect("allocate");
    let mut expected = data.clone();
    expected.resize(32768, 0);
    assert_eq!(h.contents(&file), expected, "Allocate extends with zeros");
    match block_on(engine.allocate(&file, 4096, 8192, AllocateMode::PunchHole)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            return Err(Skip(format!(
                "the scratch filesystem cannot punch holes: {e}"
            )));
        }
        Err(e) => panic!("punch hole: {e}"),
    }
    expected[4096..12288].fill(0);
    assert_eq!(h.contents(&file), expected, "the hole reads as zeros");
    let punched = block_on(engine.metadata(&file)).expect("metadata");
    assert_eq!(punched.len(), 32768, "PunchHole keeps the length");
    assert!(
        punched.blocks() < reserved.blocks(),
        "the hole freed blocks: {} before, {} after",
        reserved.blocks(),
        punched.blocks()
    );
    let metrics = engine.metrics();
    assert_eq!((metrics.allocate.ops, metrics.allocate.errors), (3, 0));
    assert_eq!(metrics.metadata.ops, 3);
    Ok(())
}

/// `ZeroRange` makes a range read as zeros and extends the file to its end.
pub fn allocate_zero_range_zeroes_and_extends<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let data = pattern(8192, 43);
    let file = h.file(&engine, &data, &rw());
    match block_on(engine.allocate(&file, 4096, 8192, AllocateMode::ZeroRange)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            return Err(Skip(format!(
                "the scratch filesystem cannot zero ranges: {e}"
            )));
        }
        Err(e) => panic!("zero range: {e}"),
    }
    let mut expected = data[..4096].to_vec();
    expected.resize(12288, 0);
    assert_eq!(h.contents(&file), expected);
    Ok(())
}

/// `set_len` cuts a file and extends it again with zeros, through the async API.
pub fn set_len_cuts_and_extends_with_zeros<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let data = pattern(10000, 45);
    let file = h.file(&engine, &data, &rw());
    block_on(engine.set_len(&file, 3000)).expect("cut");
    assert_eq!(h.contents(&file), &data[..3000]);
    block_on(engine.set_len(&file, 5000)).expect("extend");
    let mut expected = data[..3000].to_vec();
    expected.resize(5000, 0);
    assert_eq!(h.contents(&file), expected, "the extension reads as zeros");
    let (n, read) = read_at(&engine, &file, 2990, 100);
    assert_eq!(&read[..n], &expected[2990..3090]);
    assert_eq!(engine.metrics().set_len.ops, 2);
    Ok(())
}

/// `metadata` agrees with the filesystem's own answer: length, blocks, kind and times.
pub fn metadata_reports_length_blocks_and_times<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, &pattern(12345, 47), &OpenOptions::new().read(true));
    let metadata = block_on(engine.metadata(&file)).expect("metadata of a read-only file");
    let std_meta = std::fs::metadata(file.path()).expect("std metadata");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(metadata.len(), 12345);
    assert_eq!(metadata.blocks(), std_meta.blocks());
    assert!(metadata.is_file() && !metadata.is_dir() && !metadata.is_block_device());
    assert_eq!(metadata.modified(), std_meta.modified().ok());
    assert!(metadata.changed().is_some(), "ctime is always reported");
    assert_eq!(engine.metrics().metadata.ops, 1);
    Ok(())
}

/// The queue API runs the same operations: a length change, then its metadata, each with
/// its completion (`Completion::metadata` carries the record).
pub fn space_management_runs_through_the_queue<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, &pattern(8192, 49), &rw());
    let mut queue = engine.queue().expect("queue");
    let mut out = Vec::new();
    // Requests in flight have no order among themselves: one at a time.
    let steps = [
        Request::allocate(&file, 0, 65536, AllocateMode::KeepSize, 1),
        Request::set_len(&file, 4096, 2),
        Request::metadata(&file, 3),
    ];
    for request in steps {
        queue.push(request).expect("room");
        queue.wait(1, &mut out).expect("wait");
    }
    assert_eq!(out.len(), 3);
    for completion in &out[..2] {
        assert_eq!(completion.result.as_ref().ok(), Some(&0), "{completion:?}");
        assert!(completion.metadata.is_none() && completion.buf.is_none());
    }
    assert_eq!(
        (out[0].op, out[1].op, out[2].op),
        (Op::Allocate, Op::SetLen, Op::Metadata)
    );
    let metadata = out[2].metadata.as_ref().expect("the record");
    assert_eq!(metadata.len(), 4096);
    assert!(metadata.blocks() * 512 >= 4096);
    Ok(())
}

/// Bad arguments are typed errors before submission: a zero or overflowing range, a length
/// past 2^63 - 1, a read-only file, an unaligned punch on an O_DIRECT file, a closed file;
/// errors are counted.
pub fn space_management_refuses_bad_input_typed<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, &pattern(4096, 51), &rw());
    let kind = |result: engine_core::Result<()>| result.expect_err("refused").kind();
    let allocate = |offset, len, mode| block_on(engine.allocate(&file, offset, len, mode));
    assert_eq!(
        kind(allocate(0, 0, AllocateMode::Allocate)),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(allocate(u64::MAX - 10, 100, AllocateMode::KeepSize)),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        kind(allocate(i64::MAX as u64, 1, AllocateMode::PunchHole)),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        kind(block_on(engine.set_len(&file, u64::MAX))),
        ErrorKind::OutOfRange
    );
    let read_only = h.file(&engine, b"keep", &OpenOptions::new().read(true));
    assert_eq!(
        kind(block_on(engine.allocate(
            &read_only,
            0,
            4096,
            AllocateMode::Allocate
        ))),
        ErrorKind::ReadOnly
    );
    assert_eq!(
        kind(block_on(engine.set_len(&read_only, 0))),
        ErrorKind::ReadOnly
    );
    assert_eq!(h.contents(&read_only), b"keep");
    engine.close(&read_only).expect("close");
    let error = block_on(engine.metadata(&read_only)).expect_err("closed");
    assert_eq!(error.kind(), ErrorKind::BadFile);
    let metrics = engine.metrics();
    assert_eq!((metrics.allocate.ops, metrics.allocate.errors), (4, 4));
    assert_eq!((metrics.set_len.errors, metrics.metadata.errors), (2, 1));
    let direct = direct_file(h, &engine, &pattern(8192, 53), 4096)?;
    let error = block_on(engine.allocate(&direct, 512, 4096, AllocateMode::PunchHole))
        .expect_err("unaligned punch");
    assert_eq!(
        error.misalignment().map(|m| m.target),
        Some(AlignTarget::Offset),
        "{error}"
    );
    let error = block_on(engine.allocate(&direct, 4096, 100, AllocateMode::ZeroRange))
        .expect_err("unaligned length");
    assert_eq!(
        error.misalignment().map(|m| m.target),
        Some(AlignTarget::Length),
        "{error}"
    );
    Ok(())
}

/// Zero-length reads and writes succeed with 0; the exact forms succeed at once.
pub fn zero_length_transfers_succeed<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let (file, _) = eof_file(h, &engine);
    let (r, _) = block_on(engine.read_at(&file, 0, AlignedBuf::zeroed(0, 1).expect("buf")));
    assert_eq!(r.expect("empty read"), 0);
    let (w, _) = block_on(engine.write_at(&file, 0, AlignedBuf::zeroed(0, 1).expect("buf")));
    assert_eq!(w.expect("empty write"), 0);
    let (r, _) = block_on(engine.read_exact_at(&file, 0, AlignedBuf::zeroed(0, 1).expect("buf")));
    r.expect("empty exact read");
    let (w, _) = block_on(engine.write_all_at(&file, 0, AlignedBuf::zeroed(0, 1).expect("buf")));
    w.expect("empty exact write");
    assert_eq!(h.contents(&file).len(), FILE_LEN, "file unchanged");
    Ok(())
}

/// Whatever the error, the completion hands back the very buffer that was submitted.
pub fn buffer_comes_back_on_every_error<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let read_only = h.file(&engine, b"x", &OpenOptions::new().read(true));
    let closed = h.file(&engine, b"x", &rw());
    engine.close(&closed).expect("close");
    let cases: Vec<(&str, File, u64)> = vec![
        ("read-only", read_only.clone(), 0),
        ("closed", closed, 0),
        ("overflow", read_only, u64::MAX),
    ];
    for (what, file, offset) in cases {
        let buffer = buf(b"canary", 8);
        let address = buffer.as_ptr();
        let completion = complete(&engine, Request::write(&file, offset, buffer, 0));
        assert!(completion.result.is_err(), "{what}: must fail");
        let back = completion.buf.expect("buffer back");
        assert_eq!(back.as_ptr(), address, "{what}: same buffer");
        assert_eq!(back.as_slice(), b"canary", "{what}: contents intact");
    }
    Ok(())
}

/// Strict mode rejects a write overlapping a request in flight (pushed and not yet reaped),
/// and a read overlapping a write in flight, and accepts adjacent ones.
pub fn strict_mode_rejects_overlap_in_flight<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine_with(|c| c.strict = true);
    if !engine.capabilities().strict_mode {
        return Err(Skip(format!(
            "backend {} has no strict mode",
            engine.name()
        )));
    }
    let file = h.file(&engine, b"", &rw());
    let mut queue = engine.queue().expect("queue");
    queue
        .push(Request::write(&file, 0, buf(&[1; 1000], 1), 1))
        .expect("room");
    queue
        .push(Request::write(&file, 500, buf(&[2; 1000], 1), 2))
        .expect("room");
    queue
        .push(Request::read(
            &file,
            999,
            AlignedBuf::zeroed(10, 1).expect("buf"),
            3,
        ))
        .expect("room");
    queue
        .push(Request::write(&file, 1000, buf(&[4; 10], 1), 4))
        .expect("room");
    let mut out = Vec::new();
    while queue.in_flight() > 0 {
        queue.wait(1, &mut out).expect("wait");
    }
    out.sort_by_key(|c| c.user_data);
    assert!(out[0].result.is_ok(), "first write: {:?}", out[0].result);
    expect_kind(&out[1], ErrorKind::Overlap, "overlapping write");
    expect_kind(&out[2], ErrorKind::Overlap, "read overlapping a write");
    assert!(
        out[3].result.is_ok(),
        "adjacent write does not overlap: {:?}",
        out[3].result
    );
    // Once reaped, the range is free again.
    let (again, _) = block_on(engine.write_at(&file, 500, buf(&[5; 10], 1)));
    assert_eq!(again.expect("after reaping"), 10);
    Ok(())
}

/// A caller's own memory (`Vec<u8>` through `IoBuf`) works for buffered I/O and comes back.
pub fn caller_buffers_work_through_io_buf<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    let (w, back) =
        block_on(engine.write_all_at(&file, 0, AlignedBuf::from_io_buf(b"own memory".to_vec())));
    w.expect("write from a Vec");
    let vec: Vec<u8> = back.into_io_buf().expect("the Vec comes back");
    assert_eq!(vec, b"own memory");
    let target = vec![0u8; 10];
    let (r, back) = block_on(engine.read_exact_at(&file, 0, AlignedBuf::from_io_buf(target)));
    r.expect("read into a Vec");
    assert_eq!(back.into_io_buf::<Vec<u8>>().expect("Vec"), b"own memory");
    Ok(())
}

/// Buffers from the page pool meet O_DIRECT alignment and are reused after completion.
pub fn pool_buffers_work_with_direct_io<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = direct_file(h, &engine, b"", 4096)?;
    let pool = PagePool::new(PoolConfig {
        limit_bytes: 1 << 20,
        ..PoolConfig::default()
    })
    .expect("pool");
    for i in 0..8u64 {
        let mut b = pool.alloc(8192).expect("pool buffer");
        b.copy_from_slice(&pattern(8192, i));
        let (w, _) = block_on(engine.write_all_at(&file, i * 8192, b));
        w.expect("pooled direct write");
    }
    for i in 0..8u64 {
        let (r, b) = block_on(engine.read_exact_at(
            &file,
            i * 8192,
            pool.alloc_for_overwrite(8192).expect("buf"),
        ));
        r.expect("pooled direct read");
        assert_eq!(&b[..], &pattern(8192, i)[..], "block {i}");
    }
    let stats = pool.stats();
    assert_eq!(stats.allocations, 16);
    assert!(
        stats.reuses >= 14,
        "buffers reused after completion: {stats:?}"
    );
    assert_eq!(stats.bytes_in_use, 0, "every buffer returned");
    Ok(())
}

/// Metrics count operations, bytes and errors per kind, and record latencies.
pub fn metrics_count_operations_bytes_and_errors<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    write_all(&engine, &file, 0, &[7; 3000], 1);
    let _ = read_exact(&engine, &file, 0, 3000, 1);
    block_on(engine.sync_all(&file)).expect("sync");
    let (bad, _) = block_on(engine.write_at(&file, u64::MAX, buf(b"x", 1)));
    assert!(bad.is_err());
    let m = engine.metrics();
    assert_eq!(
        (m.write.ops, m.write.bytes, m.write.errors),
        (2, 3000, 1),
        "writes"
    );
    assert_eq!(
        (m.read.ops, m.read.bytes, m.read.errors),
        (1, 3000, 0),
        "reads"
    );
    assert_eq!((m.sync_all.ops, m.sync_data.ops), (1, 0), "syncs");
    assert!(m.read.latency_ns_quantile(0.5) > 0, "latency recorded");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Defects a new user hit (each of these failed before the request lifecycle had one home)

/// `read_exact_at` on an O_DIRECT file whose size is not block-aligned reports UnexpectedEof
/// with the count, and the buffer holds the bytes up to end of file (a 5000-byte file, an
/// 8192-byte read at 0): resuming at the unaligned end of file must not turn into
/// `Misaligned`.
pub fn direct_read_exact_across_an_unaligned_eof_reports_the_count<E: Backend>(
    h: &Harness<E>,
) -> CaseResult {
    let engine = h.engine();
    let data = pattern(5000, 40);
    let file = direct_file(h, &engine, &data, 4096)?;
    let (result, back) =
        block_on(engine.read_exact_at(&file, 0, AlignedBuf::zeroed(8192, 4096).expect("buf")));
    let error = result.expect_err("end of file first");
    assert_eq!(error.kind(), ErrorKind::UnexpectedEof, "{error}");
    assert_eq!(error.transferred(), Some(5000), "the count: {error}");
    assert_eq!(back.len(), 5000, "the buffer's length is the count");
    assert_eq!(back.as_slice(), &data[..], "the bytes up to end of file");
    Ok(())
}

/// An exact read longer than the kernel's single-I/O maximum is split at a boundary that keeps
/// the file's alignment (a 64 KiB `align_min` here), never at 0x7ffff000.
pub fn long_exact_reads_split_at_an_aligned_boundary<E: Backend>(h: &Harness<E>) -> CaseResult {
    const ALIGN: usize = 64 << 10;
    let hook = Hook::new(|_| None);
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let data = pattern(1 << 20, 41);
    let path = h.path();
    std::fs::write(&path, &data).expect("create file");
    let file = engine
        .open(&path, &rw().align_min(ALIGN as u32))
        .expect("open with align_min");
    // Over 2 GiB; untouched memory costs nothing.
    let len = (2 << 30) + ALIGN;
    let huge = match AlignedBuf::zeroed(len, ALIGN) {
        Ok(b) => b,
        Err(e) => return Err(Skip(format!("cannot reserve {len} bytes here: {e}"))),
    };
    let (result, back) = block_on(engine.read_exact_at(&file, 0, huge));
    let error = result.expect_err("the file is 1 MiB");
    assert_eq!(
        error.kind(),
        ErrorKind::UnexpectedEof,
        "not Misaligned: {error}"
    );
    assert_eq!(error.transferred(), Some(1 << 20));
    assert!(back[..] == data[..], "the bytes up to end of file");
    let reads: Vec<HookCall> = hook
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Read)
        .collect();
    assert!(
        reads[0].len as u64 <= IO_BYTES_MAX,
        "first piece capped: {reads:?}"
    );
    assert!(
        reads[0].len > (1 << 30),
        "first piece as long as allowed: {reads:?}"
    );
    for call in &reads {
        assert_eq!(
            call.offset as usize % ALIGN,
            0,
            "piece offset aligned: {reads:?}"
        );
        assert_eq!(call.len % ALIGN, 0, "piece length aligned: {reads:?}");
    }
    Ok(())
}

/// A FIFO is refused at open with a typed error, before a positional read can hang on it (and
/// before opening it for reading blocks for a writer).
pub fn fifos_are_refused_at_open<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let path = h.path();
    let made = std::process::Command::new("mkfifo").arg(&path).status();
    if !made.as_ref().is_ok_and(|status| status.success()) {
        return Err(Skip(format!("mkfifo could not make a FIFO here: {made:?}")));
    }
    for options in [
        rw(),
        OpenOptions::new().read(true),
        OpenOptions::new().write(true),
    ] {
        let error = engine
            .open(&path, &options)
            .expect_err("a FIFO cannot do positional I/O");
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
        assert!(error.to_string().contains("FIFO"), "says why: {error}");
    }
    Ok(())
}

/// Buffered reads of a procfs file work on every backend (Linux AIO refuses such files; the
/// engine runs them on a thread instead).
pub fn procfs_files_can_be_read<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let path = std::path::Path::new("/proc/self/status");
    let file = engine
        .open(path, &OpenOptions::new().read(true))
        .expect("open a procfs file");
    let (result, back) =
        block_on(engine.read_at(&file, 0, AlignedBuf::zeroed(4096, 8).expect("buf")));
    let n = result.expect("read a procfs file");
    assert!(n > 0, "some bytes");
    assert!(
        back.starts_with(b"Name:"),
        "the status text: {:?}",
        &back[..n.min(32)]
    );
    Ok(())
}

/// A queue moved to another thread with nothing in flight keeps working there; moved with a
/// request in flight, it either completes it or fails with a typed error: never a `poll` that
/// returns nothing forever.
pub fn a_queue_moved_between_threads_keeps_working<E: Backend>(h: &Harness<E>) -> CaseResult
where
    E::Queue: Send,
{
    let engine = h.engine();
    let data = pattern(4096, 42);
    let file = h.file(&engine, &data, &rw());
    let read = |queue: &mut E::Queue, offset: u64| {
        let mut out = Vec::new();
        let request = Request::read(
            &file,
            offset,
            AlignedBuf::zeroed(16, 8).expect("buf"),
            offset,
        );
        queue.push(request).expect("room");
        queue.wait(1, &mut out).expect("wait");
        assert_eq!(out.len(), 1);
        let completion = out.pop().expect("one");
        assert_eq!(
            completion.result.as_ref().ok(),
            Some(&16),
            "read at {offset}"
        );
        assert_eq!(
            completion.buf.as_deref(),
            Some(&data[offset as usize..offset as usize + 16]),
            "its own bytes"
        );
    };
    let mut queue = engine.queue().expect("queue");
    read(&mut queue, 0);
    // Moved with nothing in flight: works on the new thread.
    let mut queue = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                read(&mut queue, 16);
                // Leave one request in flight on this thread.
                let request = Request::read(&file, 32, AlignedBuf::zeroed(16, 8).expect("buf"), 32);
                queue.push(request).expect("room");
                queue.submit().expect("submit");
                queue
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    // Moved back with it in flight: it completes, or every call says why it cannot.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        match queue.poll(&mut out) {
            Ok(_) if !out.is_empty() => {
                assert_eq!(out[0].result.as_ref().ok(), Some(&16));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "a typed refusal: {e}");
                let again = queue
                    .wait(1, &mut out)
                    .expect_err("still refused, not a hang");
                assert_eq!(again.kind(), ErrorKind::InvalidInput, "{again}");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "poll on the moved queue neither completed nor failed"
        );
        std::thread::yield_now();
    }
    Ok(())
}

/// Free bytes of the filesystem holding `path` (statvfs).
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .expect("stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().expect("a number"));
    let (blocks, size) = (
        fields.next().expect("free blocks"),
        fields.next().expect("block size"),
    );
    blocks * size
}

/// Holds a 64 MiB file open through the engine's async API and a queue, then lets go of it as
/// `release` says, unlinks it, and checks that its storage comes back.
fn storage_comes_back<E: Backend>(h: &Harness<E>, close_first: bool) -> CaseResult {
    const LEN: usize = 64 << 20;
    let engine = h.engine();
    let path = h.path();
    {
        let std = std::fs::File::create(&path).expect("create");
        std::os::unix::fs::FileExt::write_all_at(&std, &vec![3u8; LEN], 0).expect("fill");
        std.sync_all().expect("sync");
    }
    let file = engine.open(&path, &rw()).expect("open");
    let _ = read_exact(&engine, &file, 0, 4096, 8);
    let mut queue = engine.queue().expect("queue");
    let mut out = Vec::new();
    queue
        .push(Request::read(
            &file,
            4096,
            AlignedBuf::zeroed(4096, 8).expect("buf"),
            1,
        ))
        .expect("room");
    queue.wait(1, &mut out).expect("wait");
    let before = free_bytes(h.path().parent().expect("dir"));
    if close_first {
        engine.close(&file).expect("close");
    }
    drop(file);
    std::fs::remove_file(&path).expect("unlink");
    // The queue lives on, and makes a call after the file went.
    queue.poll(&mut out).expect("poll");
    let freed = free_bytes(h.path().parent().expect("dir")).saturating_sub(before);
    assert!(
        freed >= (LEN as u64) * 3 / 4,
        "only {freed} bytes came back after unlinking a {LEN}-byte file no handle holds"
    );
    Ok(())
}

/// A file dropped without `close` lets go of its storage once unlinked: the engine keeps no
/// registration of it, and neither does a queue that used it.
pub fn a_dropped_file_lets_go_of_its_storage<E: Backend>(h: &Harness<E>) -> CaseResult {
    storage_comes_back(h, false)
}

/// A closed file is let go of by every queue that used it, at the queue's next call, not when
/// the queue drops.
pub fn a_closed_file_is_let_go_of_by_its_queues<E: Backend>(h: &Harness<E>) -> CaseResult {
    storage_comes_back(h, true)
}

/// Strict mode: a future dropped while it waited for a slot claimed no byte range, so a later
/// write to that range is not an overlap.
pub fn strict_mode_claims_nothing_for_a_future_dropped_while_waiting<E: Backend>(
    h: &Harness<E>,
) -> CaseResult {
    let engine = h.engine_with(|c| {
        c.strict = true;
        c.queue_depth = 1;
    });
    let file = h.file(&engine, b"", &rw());
    dirty(&file, 32 << 20);
    // The only slot, held by a sync the kernel works on.
    let mut sync = Box::pin(engine.sync_all(&file));
    if let Poll::Ready(result) = sync.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        result.expect("sync");
        return Err(Skip(format!(
            "backend {} completes a sync within its first poll, so no request waits for a slot",
            engine.name()
        )));
    }
    // In line for the slot, then dropped.
    assert!(
        poll_once(engine.write_at(&file, 0, buf(&[1; 4096], 1))).is_none(),
        "waits for the slot"
    );
    block_on(sync).expect("sync");
    let (result, _) = block_on(engine.write_at(&file, 0, buf(&[2; 4096], 1)));
    assert_eq!(result.expect("no overlap left behind"), 4096);
    Ok(())
}

/// Requests beyond a full submission queue (a 2-entry io_uring SQ or AIO context under 32
/// requests) stay staged and complete, through both APIs: nothing is dropped, nothing hangs.
pub fn a_full_submission_queue_loses_no_request<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine_with(|c| c.testing.submission_entries = Some(2));
    let file = h.file(&engine, b"", &rw());
    let requests: Vec<Request> = (0..32u64)
        .map(|i| Request::write(&file, i * 512, buf(&pattern(512, i), 512), i))
        .collect();
    let completions = block_on(engine.submit_batch(requests));
    for c in &completions {
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&512),
            "async write {}",
            c.user_data
        );
    }
    let mut queue = engine.queue().expect("queue");
    for i in 0..32u64 {
        queue
            .push(Request::read(
                &file,
                i * 512,
                AlignedBuf::zeroed(512, 512).expect("buf"),
                i,
            ))
            .expect("room");
    }
    let mut out = Vec::new();
    while queue.in_flight() > 0 {
        queue.wait(queue.in_flight(), &mut out).expect("wait");
    }
    assert_eq!(out.len(), 32, "one completion per read");
    for c in &out {
        assert_eq!(
            c.buf.as_deref(),
            Some(&pattern(512, c.user_data)[..]),
            "read {} got its own data",
            c.user_data
        );
    }
    Ok(())
}

/// The depth of engines in the suite, re-exported for cases that reason about it.
pub const SUITE_DEPTH: usize = DEPTH;

// ---------------------------------------------------------------------------------------------
// Vectored reads and writes

/// `bufs` of the given lengths, filled in order from `data`.
fn vectored(data: &[u8], lens: &[usize], align: usize) -> Vec<AlignedBuf> {
    let mut at = 0;
    lens.iter()
        .map(|&len| {
            at += len;
            buf(&data[at - len..at], align)
        })
        .collect()
}

fn concat(bufs: &[AlignedBuf]) -> Vec<u8> {
    bufs.iter().flat_map(|b| b.iter().copied()).collect()
}

/// A vectored write lands its buffers side by side, in order, at the offset, and a vectored
/// read split differently reads them back; each is one operation in the metrics, with its
/// whole byte count.
pub fn vectored_writes_and_reads_round_trip<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, &[9; 1000], &rw());
    let data = pattern(100 + 4096 + 7, 60);
    let (result, back) =
        block_on(engine.write_vectored_at(&file, 1000, vectored(&data, &[100, 4096, 7], 8)));
    result.expect("vectored write");
    assert_eq!(concat(&back), data, "the buffers come back as they went");
    let on_disk = h.contents(&file);
    assert_eq!(
        &on_disk[..1000],
        &[9; 1000][..],
        "before the offset: untouched"
    );
    assert_eq!(
        &on_disk[1000..],
        &data[..],
        "the buffers in order from the offset"
    );
    let empty = vec![
        AlignedBuf::zeroed(3000, 8).expect("buf"),
        AlignedBuf::zeroed(0, 8).expect("buf"),
        AlignedBuf::zeroed(1203, 8).expect("buf"),
    ];
    let (result, back) = block_on(engine.read_vectored_at(&file, 1000, empty));
    result.expect("vectored read");
    let lens: Vec<usize> = back.iter().map(AlignedBuf::len).collect();
    assert_eq!(lens, [3000, 0, 1203]);
    assert_eq!(concat(&back), data, "read back, split differently");
    let m = engine.metrics();
    assert_eq!(
        (m.write.ops, m.write.bytes),
        (1, data.len() as u64),
        "one write"
    );
    assert_eq!(
        (m.read.ops, m.read.bytes),
        (1, data.len() as u64),
        "one read"
    );
    Ok(())
}

/// Vectored requests on an O_DIRECT file, through the queue API, with a sync linked after the
/// write: the completion carries the buffers in `bufs` (and no `buf`), and means written and
/// synced.
pub fn vectored_direct_io_round_trips_through_the_queue<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = direct_file(h, &engine, b"", 4096)?;
    let data = pattern(3 * 4096, 61);
    let mut queue = engine.queue().expect("queue");
    let mut out = Vec::new();
    let write = Request::write_vectored(&file, 4096, vectored(&data, &[8192, 4096], 4096), 1)
        .with_flags(WriteFlags::SYNC_DATA_AFTER);
    queue.push(write).expect("room");
    queue.wait(1, &mut out).expect("wait");
    let zeroed = |len| AlignedBuf::zeroed(len, 4096).expect("buf");
    let read = Request::read_vectored(&file, 4096, vec![zeroed(4096), zeroed(8192)], 2);
    queue.push(read).expect("room");
    queue.wait(1, &mut out).expect("wait");
    assert_eq!(out.len(), 2);
    let (written, read) = (&out[0], &out[1]);
    assert_eq!(
        written.result.as_ref().ok(),
        Some(&data.len()),
        "{written:?}"
    );
    assert!(written.buf.is_none() && written.bufs.len() == 2);
    assert_eq!(read.result.as_ref().ok(), Some(&data.len()), "{read:?}");
    assert_eq!(concat(&read.bufs), data, "read back");
    assert_eq!(&h.contents(&file)[4096..], &data[..], "on disk");
    let m = engine.metrics();
    assert_eq!((m.write.ops, m.read.ops, m.write.errors), (1, 1, 0));
    Ok(())
}

/// A request of more buffers than one `preadv` takes (IOV_MAX, 1024) is split inside the
/// engine, not refused by the kernel with EINVAL, and the data lands in order.
pub fn vectored_requests_beyond_iov_max_are_split<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = h.file(&engine, b"", &rw());
    let count = Request::IOV_MAX + 476;
    let data = pattern(count * 16, 62);
    let (result, _) = block_on(engine.write_vectored_at(&file, 0, vectored(&data, &[16; 1500], 8)));
    result.expect("1500 buffers written");
    assert_eq!(h.contents(&file), data, "in order");
    // Read back into 3000 buffers of 8 bytes: three submissions.
    let empty = (0..2 * count)
        .map(|_| AlignedBuf::zeroed(8, 8).expect("buf"))
        .collect();
    let (result, back) = block_on(engine.read_vectored_at(&file, 0, empty));
    result.expect("3000 buffers read");
    assert_eq!(back.len(), 2 * count);
    assert_eq!(concat(&back), data, "read back in order");
    Ok(())
}

/// A vectored read across end of file is `UnexpectedEof` with the count, and each buffer's
/// length is what it received: full buffers, then the partial one, then empty ones.
pub fn vectored_read_across_eof_fills_in_order_and_reports_the_count<E: Backend>(
    h: &Harness<E>,
) -> CaseResult {
    let engine = h.engine();
    let (file, data) = eof_file(h, &engine);
    let empty = (0..4)
        .map(|_| AlignedBuf::zeroed(4096, 8).expect("buf"))
        .collect();
    let (result, back) = block_on(engine.read_vectored_at(&file, 0, empty));
    let error = result.expect_err("the file is 10 000 bytes");
    assert_eq!(error.kind(), ErrorKind::UnexpectedEof, "{error}");
    assert_eq!(error.transferred(), Some(FILE_LEN as u64), "{error}");
    let lens: Vec<usize> = back.iter().map(AlignedBuf::len).collect();
    assert_eq!(lens, [4096, 4096, FILE_LEN - 8192, 0]);
    assert_eq!(concat(&back), data, "the bytes up to end of file");
    Ok(())
}

/// Short vectored reads and writes are resumed at exactly the byte where they stopped, even
/// inside a buffer, until every buffer is done.
pub fn short_vectored_transfers_resume_exactly<E: Backend>(h: &Harness<E>) -> CaseResult {
    let hook =
        Hook::new(|c| matches!(c.op, Op::Read | Op::Write).then_some(FaultAction::Short(1000)));
    let engine = h.engine_with_hook(Arc::clone(&hook));
    requires_hook(&engine)?;
    let file = h.file(&engine, b"", &rw());
    let data = pattern(3500, 63);
    let (result, _) =
        block_on(engine.write_vectored_at(&file, 0, vectored(&data, &[1500, 500, 1500], 8)));
    result.expect("written whole");
    assert_eq!(h.contents(&file), data, "all bytes on disk, in order");
    let empty = [700, 2000, 800]
        .iter()
        .map(|&len| AlignedBuf::zeroed(len, 8).expect("buf"))
        .collect();
    let (result, back) = block_on(engine.read_vectored_at(&file, 0, empty));
    result.expect("read whole");
    assert_eq!(concat(&back), data, "read back whole");
    for op in [Op::Write, Op::Read] {
        let offsets: Vec<u64> = hook
            .calls()
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.offset)
            .collect();
        assert_eq!(
            offsets,
            [0, 1000, 2000, 3000],
            "{op:?} resumed at each remainder"
        );
    }
    Ok(())
}

/// Under O_DIRECT every buffer of a vectored request is checked on its own, before
/// submission: a misaligned address or length in any one of them is `Misaligned`, naming it,
/// though the total is aligned.
pub fn every_vectored_buffer_is_checked_for_alignment<E: Backend>(h: &Harness<E>) -> CaseResult {
    let engine = h.engine();
    let file = direct_file(h, &engine, &[0; 8192], 4096)?;
    let aligned = || AlignedBuf::zeroed(4096, 4096).expect("buf");
    let shifted = misaligned_buf(4096, 4096, 512);
    let (result, back) = block_on(engine.read_vectored_at(&file, 0, vec![aligned(), shifted]));
    let error = result.expect_err("the second buffer's address");
    assert_eq!(
        error.misalignment().map(|m| m.target),
        Some(AlignTarget::Memory),
        "{error}"
    );
    assert!(error.to_string().contains("buffer 1 of 2"), "{error}");
    assert_eq!(back.len(), 2, "the buffers come back");
    let halves = vec![
        buf(&[1; 2048], 4096),
        buf(&[2; 2048], 4096),
        buf(&[3; 4096], 4096),
    ];
    let (result, _) = block_on(engine.write_vectored_at(&file, 0, halves));
    let error = result.expect_err("2048-byte buffers on a 4096 file");
    assert_eq!(
        error.misalignment().map(|m| (m.target, m.actual)),
        Some((AlignTarget::Length, 2048)),
        "{error}"
    );
    assert_eq!(h.contents(&file), [0; 8192], "nothing was written");
    assert_eq!(engine.metrics().write.errors, 1);
    Ok(())
}

//! The GPU form of a loop-IR kernel, which the NVPTX backend, the interpreter's GPU
//! mode and the CUDA runtime agree on: top-level lets, then grid loops (one per grid
//! axis, nested; uniform lets and the block's shared arrays between them), then block
//! loops of constant trip counts (one per block axis, nested), whose body is what each
//! thread runs (barriers, warp shuffles, serial loops; no parallel or GPU loops).
//! A grid loop's iteration is a CUDA block, a block loop's iteration a thread; the
//! launch is the grid loops' trip counts (expressions over the kernel's dims) and the
//! block loops' (constants). [`schedule`] checks that form and gives the launch;
//! [`map_parallel`] puts a CPU kernel into it (its outermost parallel loop spread over
//! threads), the schedule every op without a GPU template gets.

use crate::loopir::{BinOp, Expr, Kernel, LoopTag, Role, Stmt, Ty, VarDecl, VarId};
use std::collections::HashMap;

/// Threads per block of [`map_parallel`]'s schedule.
pub const MAP_THREADS: i64 = 256;

/// Threads of a warp.
pub const WARP: i64 = 32;

/// How a GPU kernel is launched.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// Blocks along x, y, z: expressions over the kernel's dims only (`Expr::Dim`).
    pub grid: [Expr; 3],
    /// Threads along x, y, z.
    pub block: [i64; 3],
    /// Bytes of shared memory a block declares.
    pub shared_bytes: i64,
}

impl Launch {
    /// Threads per block.
    pub fn threads(&self) -> i64 {
        self.block.iter().product()
    }

    /// The grid for dim values `dims` (negative trip counts are 0 blocks).
    pub fn grid_for(&self, dims: &[i64]) -> Result<[i64; 3], String> {
        let mut out = [1i64; 3];
        for (o, e) in out.iter_mut().zip(&self.grid) {
            *o = eval_dims(e, dims)?.max(0);
        }
        Ok(out)
    }
}

/// Evaluates an i64 expression over dim values (what [`Launch::grid`] holds).
pub fn eval_dims(e: &Expr, dims: &[i64]) -> Result<i64, String> {
    Ok(match e {
        Expr::Int(v, _) => *v,
        Expr::Dim(i) => *dims
            .get(*i as usize)
            .ok_or_else(|| format!("dim {i} not passed"))?,
        Expr::Bin(op, a, b) => {
            let (x, y) = (eval_dims(a, dims)?, eval_dims(b, dims)?);
            match op {
                BinOp::Add => x.wrapping_add(y),
                BinOp::Sub => x.wrapping_sub(y),
                BinOp::Mul => x.wrapping_mul(y),
                BinOp::Div if y != 0 => x.wrapping_div(y),
                BinOp::Rem if y != 0 => x.wrapping_rem(y),
                BinOp::Div | BinOp::Rem => 0,
                BinOp::Max => x.max(y),
                BinOp::Min => x.min(y),
                other => return Err(format!("{other:?} in a launch bound")),
            }
        }
        other => return Err(format!("{other:?} in a launch bound")),
    })
}

/// True when the kernel has GPU loops (it is meant to run in the GPU form).
pub fn is_gpu(k: &Kernel) -> bool {
    fn any(b: &[Stmt]) -> bool {
        b.iter().any(|s| match s {
            Stmt::For { tag, body, .. } => {
                matches!(
                    tag,
                    LoopTag::GpuGrid(_) | LoopTag::GpuBlock(_) | LoopTag::GpuWarp
                ) || any(body)
            }
            Stmt::If { then, els, .. } => any(then) || any(els),
            _ => false,
        })
    }
    any(&k.body)
}

/// Substitutes top-level lets into an expression, so it depends on dims only.
fn inline_lets(e: &Expr, lets: &HashMap<VarId, Expr>) -> Result<Expr, String> {
    Ok(match e {
        Expr::Var(v) => lets
            .get(v)
            .cloned()
            .ok_or_else(|| format!("variable v{} in a launch bound is not a top-level let", v.0))?,
        Expr::Bin(op, a, b) => Expr::bin(*op, inline_lets(a, lets)?, inline_lets(b, lets)?),
        Expr::Int(..) | Expr::Dim(_) => e.clone(),
        other => return Err(format!("{other:?} in a launch bound")),
    })
}

/// The trip count of `lo..hi step step`.
fn trips(lo: Expr, hi: Expr, step: i64) -> Expr {
    let n = (hi - lo + (step - 1)) / step;
    Expr::bin(BinOp::Max, n, Expr::i(0))
}

/// Checks that `k` is in the GPU form (see the module comment) and returns its launch.
pub fn schedule(k: &Kernel) -> Result<Launch, String> {
    let err = |m: String| format!("kernel {}: {m}", k.name);
    let mut lets = HashMap::new();
    let mut grid = [Expr::i(1), Expr::i(1), Expr::i(1)];
    let mut block = [1i64; 3];
    let mut shared = 0i64;
    let mut rest = &k.body[..];
    // Top-level lets.
    while let [Stmt::Let { var, value }, tail @ ..] = rest {
        if k.var(*var).ty == Ty::I64 {
            if let Ok(v) = inline_lets(value, &lets) {
                lets.insert(*var, v);
            }
        }
        rest = tail;
    }
    // Grid loops, with lets and shared allocations between them.
    let mut seen_grid = [false; 3];
    let mut in_grid = false;
    loop {
        match rest {
            [Stmt::For {
                lo,
                hi,
                step,
                tag: LoopTag::GpuGrid(a),
                body,
                ..
            }] => {
                let a = *a as usize;
                if a > 2 || seen_grid[a] {
                    return Err(err(format!("grid axis {a} is used twice or unknown")));
                }
                seen_grid[a] = true;
                let n = trips(inline_lets(lo, &lets)?, inline_lets(hi, &lets)?, *step);
                grid[a] = n;
                in_grid = true;
                rest = body;
            }
            [Stmt::Let { .. }, tail @ ..] if in_grid => rest = tail,
            [Stmt::Alloc { buf, len }, tail @ ..] if in_grid => {
                let b = k.buf(*buf);
                if b.role != Role::Shared {
                    return Err(err(format!(
                        "local %{} is allocated outside the threads (only shared arrays go there)",
                        b.name
                    )));
                }
                shared += len * b.ty.bytes() as i64;
                rest = tail;
            }
            [Stmt::For {
                tag: LoopTag::GpuBlock(_),
                ..
            }] if in_grid => break,
            _ if !in_grid => {
                return Err(err(
                    "the body must be top-level lets and then one grid loop".into(),
                ))
            }
            _ => {
                return Err(err(
                    "a grid loop's body must be lets and shared allocations, then one grid or block loop"
                        .into(),
                ))
            }
        }
    }
    // Block loops.
    let mut seen_block = [false; 3];
    while let [Stmt::For {
        lo,
        hi,
        step,
        tag: LoopTag::GpuBlock(a),
        body,
        ..
    }] = rest
    {
        let a = *a as usize;
        if a > 2 || seen_block[a] {
            return Err(err(format!("block axis {a} is used twice or unknown")));
        }
        seen_block[a] = true;
        let (Some(l), Some(h)) = (lo.as_i64(), hi.as_i64()) else {
            return Err(err("block loops need constant bounds".into()));
        };
        block[a] = ((h - l + step - 1) / step).max(0);
        rest = body;
    }
    let threads: i64 = block.iter().product();
    if !(1..=1024).contains(&threads) {
        return Err(err(format!("{threads} threads per block (1..=1024)")));
    }
    if shared > 48 * 1024 {
        return Err(err(format!(
            "{shared} bytes of shared memory per block (at most 48 KiB)"
        )));
    }
    check_thread_body(k, rest).map_err(err)?;
    Ok(Launch {
        grid,
        block,
        shared_bytes: shared,
    })
}

fn check_thread_body(k: &Kernel, body: &[Stmt]) -> Result<(), String> {
    for s in body {
        match s {
            Stmt::For { tag, body, .. } => {
                if matches!(
                    tag,
                    LoopTag::Parallel
                        | LoopTag::GpuGrid(_)
                        | LoopTag::GpuBlock(_)
                        | LoopTag::GpuWarp
                ) {
                    return Err(format!("a {tag:?} loop inside a thread's body"));
                }
                check_thread_body(k, body)?;
            }
            Stmt::If { then, els, .. } => {
                check_thread_body(k, then)?;
                check_thread_body(k, els)?;
            }
            Stmt::Alloc { buf, .. } if k.buf(*buf).role == Role::Shared => {
                return Err(format!(
                    "shared %{} is allocated inside a thread's body",
                    k.buf(*buf).name
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// How [`map_parallel`] put a kernel into the GPU form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// The top-level parallel loop's iterations over threads of as many blocks as needed.
    Grid,
    /// One block: every thread runs the serial loops, the innermost independent
    /// (vectorize-tagged) loops are strided over the block's threads.
    BlockStride,
    /// One thread of one block.
    OneThread,
}

/// Puts a CPU kernel into the GPU form: when its body is top-level lets and one
/// parallel loop, that loop's iterations are spread over [`MAP_THREADS`]-thread
/// blocks (one iteration per thread, the grid sized by the trip count); else, when
/// every store sits in a vectorize-tagged loop (independent iterations) that assigns
/// no outer variable, one block runs the kernel with those loops strided over its
/// threads; any other kernel runs on one thread (correct, not fast: the build
/// reports it). Parallel loops nested inside become serial.
pub fn map_parallel(k: Kernel) -> (Kernel, Mapping) {
    let (mut k, grid) = map_grid(k);
    if grid {
        return (k, Mapping::Grid);
    }
    // `map_grid` left [grid(1) [block(1) [body]]]: try the block-stride form.
    let Some(Stmt::For { body: gb, .. }) = k.body.first_mut() else {
        return (k, Mapping::OneThread);
    };
    let Some(Stmt::For {
        var: t,
        hi,
        body: inner,
        ..
    }) = gb.first_mut()
    else {
        return (k, Mapping::OneThread);
    };
    let mut strided = inner.clone();
    let mut count = 0;
    if block_stride(&mut strided, *t, &mut count) && count > 0 {
        *inner = strided;
        *hi = Expr::i(MAP_THREADS);
        return (k, Mapping::BlockStride);
    }
    (k, Mapping::OneThread)
}

/// Strides the outermost independent vectorize loops of `body` over the block's
/// threads (`t`); false when a store, barrier or shuffle sits outside such a loop.
fn block_stride(body: &mut [Stmt], t: VarId, count: &mut usize) -> bool {
    for s in body {
        match s {
            Stmt::For {
                tag: LoopTag::Vectorize(_),
                lo,
                step,
                body: b,
                var,
                ..
            } if independent(b, *var) => {
                *lo = lo.clone() + Expr::Var(t) * *step;
                *step *= MAP_THREADS;
                *count += 1;
            }
            Stmt::For { body: b, .. } => {
                if !block_stride(b, t, count) {
                    return false;
                }
            }
            Stmt::If { then, els, .. } => {
                if !block_stride(then, t, count) || !block_stride(els, t, count) {
                    return false;
                }
            }
            Stmt::Store { .. }
            | Stmt::StoreRaw { .. }
            | Stmt::Barrier
            | Stmt::QUnpack(_)
            | Stmt::QTile(_)
            | Stmt::FTile(_)
            | Stmt::Mma(_)
            | Stmt::ShuffleXor { .. } => return false,
            Stmt::Let { .. }
            | Stmt::Assign { .. }
            | Stmt::Alloc { .. }
            | Stmt::QDot(_)
            | Stmt::Prefetch { .. } => {}
        }
    }
    true
}

/// True when a loop body assigns only variables it defines (its iterations share
/// nothing but what they read) and has no barrier or shuffle.
fn independent(body: &[Stmt], var: VarId) -> bool {
    fn defined(b: &[Stmt], out: &mut Vec<VarId>) {
        for s in b {
            match s {
                Stmt::Let { var, .. } => out.push(*var),
                Stmt::For { var, body, .. } => {
                    out.push(*var);
                    defined(body, out);
                }
                Stmt::If { then, els, .. } => {
                    defined(then, out);
                    defined(els, out);
                }
                _ => {}
            }
        }
    }
    fn ok(b: &[Stmt], defs: &[VarId]) -> bool {
        b.iter().all(|s| match s {
            Stmt::Assign { var, .. } => defs.contains(var),
            Stmt::QDot(q) => q.accs.iter().all(|a| defs.contains(a)),
            Stmt::QTile(t) => t.accs.iter().all(|a| defs.contains(a)),
            // Writes its tile: only private to an iteration that allocates it.
            Stmt::QUnpack(_) | Stmt::FTile(_) => false,
            Stmt::Barrier | Stmt::ShuffleXor { .. } | Stmt::Mma(_) => false,
            Stmt::For { body, .. } => ok(body, defs),
            Stmt::If { then, els, .. } => ok(then, defs) && ok(els, defs),
            _ => true,
        })
    }
    let mut defs = vec![var];
    defined(body, &mut defs);
    ok(body, &defs)
}

/// The grid mapping of [`map_parallel`], or one thread; true for the grid.
fn map_grid(mut k: Kernel) -> (Kernel, bool) {
    let body = std::mem::take(&mut k.body);
    let nlets = body
        .iter()
        .take_while(|s| matches!(s, Stmt::Let { .. }))
        .count();
    let spread = matches!(
        &body[nlets..],
        [Stmt::For {
            tag: LoopTag::Parallel,
            ..
        }]
    );
    let new_var = |k: &mut Kernel, name: &str| {
        let id = VarId(k.vars.len() as u32);
        k.vars.push(VarDecl {
            name: format!("{name}{}", id.0),
            ty: Ty::I64,
        });
        id
    };
    let g = new_var(&mut k, "gx");
    let t = new_var(&mut k, "tx");
    let grid_loop = |var, hi: Expr, body| Stmt::For {
        var,
        lo: Expr::i(0),
        hi,
        step: 1,
        tag: LoopTag::GpuGrid(0),
        body,
    };
    let block_loop = |var, n: i64, body| Stmt::For {
        var,
        lo: Expr::i(0),
        hi: Expr::i(n),
        step: 1,
        tag: LoopTag::GpuBlock(0),
        body,
    };
    if spread {
        let mut body = body;
        let Some(Stmt::For {
            var,
            lo,
            hi,
            step,
            body: inner,
            ..
        }) = body.pop()
        else {
            unreachable!("matched above");
        };
        let prefix = body;
        let n = new_var(&mut k, "n");
        let it = new_var(&mut k, "it");
        let mut inner = inner;
        serialize(&mut inner);
        let mut thread = vec![Stmt::Let {
            var,
            value: lo.clone() + Expr::Var(it) * step,
        }];
        thread.extend(inner);
        let guarded = vec![
            Stmt::Let {
                var: it,
                value: Expr::Var(g) * MAP_THREADS + Expr::Var(t),
            },
            Stmt::If {
                cond: Expr::Var(it).lt(Expr::Var(n)),
                then: thread,
                els: Vec::new(),
            },
        ];
        let blocks = (Expr::Var(n) + (MAP_THREADS - 1)) / MAP_THREADS;
        let mut out = prefix;
        out.push(Stmt::Let {
            var: n,
            value: trips(lo, hi, step),
        });
        out.push(grid_loop(
            g,
            blocks,
            vec![block_loop(t, MAP_THREADS, guarded)],
        ));
        k.body = out;
        (k, true)
    } else {
        let mut inner = body;
        serialize(&mut inner);
        k.body = vec![grid_loop(g, Expr::i(1), vec![block_loop(t, 1, inner)])];
        (k, false)
    }
}

/// Turns parallel loops into serial ones (inside a GPU thread).
fn serialize(body: &mut [Stmt]) {
    for s in body {
        match s {
            Stmt::For { tag, body, .. } => {
                if *tag == LoopTag::Parallel {
                    *tag = LoopTag::Serial;
                }
                serialize(body);
            }
            Stmt::If { then, els, .. } => {
                serialize(then);
                serialize(els);
            }
            _ => {}
        }
    }
}

/// What GPU code may assume about the divisibility of an index or byte offset, from
/// the kernel's never-reassigned lets and its loops' starts and steps: the NVPTX
/// lowering aligns loads and stores by it (so adjacent ones become vector accesses),
/// and the interpreter's GPU mode checks every access against the same claim.
pub struct Alignment {
    facts: HashMap<VarId, Expr>,
}

impl Alignment {
    /// The facts of kernel `k`.
    pub fn of(k: &Kernel) -> Alignment {
        let mut facts = HashMap::new();
        let mut assigned = Vec::new();
        alignment_facts(&k.body, &mut facts, &mut assigned);
        for v in assigned {
            facts.remove(&v);
        }
        Alignment { facts }
    }

    /// The largest power of two (up to 16) `e` is known to be a multiple of.
    pub fn multiple(&self, e: &Expr) -> u64 {
        known_multiple(e, &self.facts, 0)
    }

    /// Bytes of alignment of the element access `buf[index]` for `elem`-byte elements
    /// of a buffer that starts 16-byte aligned: up to 16, at least the element.
    pub fn elem_bytes(&self, index: &Expr, elem: u64) -> u64 {
        (self.multiple(index) * elem).clamp(elem.max(1), 16)
    }

    /// Bytes of alignment of a `size`-byte access at byte `off`: up to its size.
    pub fn raw_bytes(&self, off: &Expr, size: u64) -> u64 {
        self.multiple(off).min(size).max(1)
    }
}

/// The largest power of two (up to 16) `e` is known to be a multiple of, given the
/// values of the kernel's never-reassigned lets and the loop variables' starts and
/// steps (`vars`).
fn known_multiple(e: &Expr, vars: &HashMap<VarId, Expr>, depth: u32) -> u64 {
    if depth > 32 {
        return 1;
    }
    match e {
        Expr::Int(0, _) => 16,
        Expr::Int(c, _) => (1u64 << c.unsigned_abs().trailing_zeros().min(4)).min(16),
        Expr::Bin(BinOp::Add | BinOp::Sub, a, b) => {
            known_multiple(a, vars, depth + 1).min(known_multiple(b, vars, depth + 1))
        }
        Expr::Bin(BinOp::Mul, a, b) => {
            (known_multiple(a, vars, depth + 1) * known_multiple(b, vars, depth + 1)).min(16)
        }
        Expr::Var(v) => vars
            .get(v)
            .map_or(1, |x| known_multiple(x, vars, depth + 1)),
        _ => 1,
    }
}

/// What [`known_multiple`] reads: every let never assigned afterwards, and every
/// loop variable as `lo + step · k` (an expression with the same divisors).
fn alignment_facts(body: &[Stmt], out: &mut HashMap<VarId, Expr>, assigned: &mut Vec<VarId>) {
    for s in body {
        match s {
            Stmt::Let { var, value } => {
                out.insert(*var, value.clone());
            }
            Stmt::Assign { var, .. } | Stmt::ShuffleXor { var, .. } => assigned.push(*var),
            Stmt::Mma(m) => assigned.extend(m.d.iter().copied()),
            Stmt::QDot(q) => assigned.extend(q.accs.iter().copied()),
            Stmt::QTile(t) => assigned.extend(t.accs.iter().copied()),
            Stmt::For {
                var,
                lo,
                step,
                body,
                ..
            } => {
                out.insert(*var, lo.clone() + Expr::i(*step) * Expr::Dim(u32::MAX));
                alignment_facts(body, out, assigned);
            }
            Stmt::If { then, els, .. } => {
                alignment_facts(then, out, assigned);
                alignment_facts(els, out, assigned);
            }
            _ => {}
        }
    }
}

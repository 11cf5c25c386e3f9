//! `--explain-fusion`: for every fusion candidate still in a module (each softmax for
//! attention, each reduce_mean of a square for RMSNorm, each x - reduce_mean(x) for
//! LayerNorm, each matmul followed by a bias add for a GEMM epilogue, each activation of
//! a linear for an activation epilogue, each product of an activation for a gated
//! unit, each group of linears sharing an input for a GEMM merge) say which pattern
//! was nearest and what blocked it, naming the node. It runs the same matchers the
//! rewrite rules run, on the module as it is, so the reason given is the real one.
//! An attention whose additive mask looks triangular (a trilu or an index comparison)
//! but was not taken as causal is reported too (`causal_mask`), with the reason, and so
//! is a rotate_half (concat of a negated slice and a slice) not fused into `rope`, and
//! an attention scale not folded into the q projection because a value on the way has
//! other users.

use super::convert;
use super::gemm;
use super::lang::ENode;
use super::matchers::{match_attention, match_layer_norm, match_rms_norm, Blocked};
use llmc_ir::ops::fused_gemm::Act;
use llmc_ir::{AttrsExt, Module, NodeId, Op, ValueDef, ValueId};
use std::fmt;

/// One candidate that was not rewritten.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The fusion it was a candidate for: `attention`, `rms_norm`, `layer_norm`,
    /// `gemm_epilogue`, `glu`, `gemm_merge`, `causal_mask`, `rope`, `attention_scale`.
    pub candidate: &'static str,
    /// The value the candidate starts at (`%334`).
    pub node: String,
    /// The op of that node.
    pub op: Op,
    /// The nearest pattern.
    pub pattern: &'static str,
    /// What blocked it, and where.
    pub reason: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} candidate {} ({}): not fused into {}: {}",
            self.candidate, self.node, self.op, self.pattern, self.reason
        )
    }
}

/// Explains every unfused candidate in `module`.
pub fn explain(module: &Module) -> Vec<Explanation> {
    let g = &module.graph;
    let Ok(loaded) = convert::load(module) else {
        return Vec::new();
    };
    let eg = &loaded.egraph;
    let names = llmc_ir::text::value_names(module);
    let vname = |v: ValueId| names.get(v.0 as usize).cloned().unwrap_or_default();
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            if let Some(u) = users.get_mut(v.0 as usize) {
                u.push(NodeId(i as u32));
            }
        }
    }
    // The e-node of a graph node (operand classes as loaded).
    let enode = |nid: NodeId| -> Option<ENode> {
        let n = g.nodes.get(nid.0 as usize)?;
        let out = *n.outputs.first()?;
        let class = loaded.class_of.get(out.0 as usize).copied().flatten()?;
        eg[class]
            .nodes
            .iter()
            .find(|e| e.as_op() == Some(n.op))
            .cloned()
    };
    let out_of = |nid: NodeId| {
        g.nodes
            .get(nid.0 as usize)
            .and_then(|n| n.outputs.first().copied())
    };
    // Nodes reachable from `v` through at most `hops` consumers.
    let downstream = |v: ValueId, hops: usize| -> Vec<NodeId> {
        let mut seen = Vec::new();
        let mut frontier = vec![v];
        for _ in 0..hops {
            let mut next = Vec::new();
            for f in frontier {
                for &u in users.get(f.0 as usize).into_iter().flatten() {
                    if !seen.contains(&u) {
                        seen.push(u);
                        next.extend(out_of(u));
                    }
                }
            }
            frontier = next;
        }
        seen
    };
    let nearest = |tries: Vec<Result<(), Blocked>>, pattern: &'static str| -> Option<Blocked> {
        let mut best: Option<Blocked> = None;
        for t in tries {
            match t {
                Ok(()) => return None,
                Err(b) => {
                    if best.as_ref().is_none_or(|x| b.depth > x.depth) {
                        best = Some(b);
                    }
                }
            }
        }
        Some(best.unwrap_or(Blocked {
            pattern,
            depth: 0,
            msg: "no consumer of this node starts the pattern".into(),
        }))
    };
    let mut out = Vec::new();
    for n in &g.nodes {
        let Some(res) = n.outputs.first().copied() else {
            continue;
        };
        let push = |out: &mut Vec<Explanation>, candidate, b: Blocked| {
            out.push(Explanation {
                candidate,
                node: vname(res),
                op: n.op,
                pattern: b.pattern,
                reason: b.msg,
            })
        };
        match n.op {
            Op::Softmax => {
                let consumers = users.get(res.0 as usize).cloned().unwrap_or_default();
                let mut tries = Vec::new();
                for u in &consumers {
                    let un = &g.nodes[u.0 as usize];
                    if un.op == Op::MatMul && un.inputs.first() == Some(&res) {
                        if let Some(e) = enode(*u) {
                            tries.push(match_attention(eg, &e).map(|_| ()));
                        }
                    }
                }
                if tries.is_empty() {
                    let ops: Vec<String> = consumers
                        .iter()
                        .map(|u| g.nodes[u.0 as usize].op.to_string())
                        .collect();
                    tries.push(Err(Blocked {
                        pattern: "attention",
                        depth: 0,
                        msg: if ops.is_empty() {
                            "the softmax result is a graph output, not multiplied by v".into()
                        } else {
                            format!(
                                "the softmax result feeds {} — not a matmul with v as operand 1",
                                ops.join(", ")
                            )
                        },
                    }));
                }
                if let Some(b) = nearest(tries, "attention") {
                    push(&mut out, "attention", b);
                }
            }
            Op::FlashAttention | Op::Attention => {
                // A scale left on attention although q comes from a scalable projection:
                // some value on the way has other users.
                let scaled = n.attrs.float("scale").is_some_and(|s| s != 1.0);
                let mut v = n.inputs.first().copied();
                for _ in 0..6 {
                    let Some(cur) = v.filter(|_| scaled) else {
                        break;
                    };
                    let uses = users.get(cur.0 as usize).map_or(0, Vec::len)
                        + g.outputs.iter().filter(|&&o| o == cur).count();
                    let ValueDef::Node(p, _) = g.value(cur).def else {
                        break;
                    };
                    let pn = &g.nodes[p.0 as usize];
                    let base = matches!(pn.op, Op::MatMul | Op::Linear);
                    let scalable = base
                        && pn.inputs.iter().skip(1).all(|&w| {
                            loaded
                                .class_of
                                .get(w.0 as usize)
                                .copied()
                                .flatten()
                                .is_some_and(|c| {
                                    crate::egraph::rules::algebra::is_scalable_weight(eg, c)
                                })
                        });
                    if base && !scalable {
                        break;
                    }
                    if !base && !matches!(pn.op, Op::Rope | Op::Transpose | Op::Reshape) {
                        break;
                    }
                    if uses != 1 {
                        push(
                            &mut out,
                            "attention_scale",
                            Blocked {
                                pattern: "scale-into-q",
                                depth: 1,
                                msg: format!(
                                    "scale kept on attention: {} (on the way to the q projection's weight) has {uses} users, and scaling the weight would change the others",
                                    vname(cur)
                                ),
                            },
                        );
                        break;
                    }
                    v = if base {
                        None
                    } else {
                        pn.inputs.first().copied()
                    };
                }
                // An additive mask that looks triangular but was not taken for the
                // causal rule: say why (the causal flag is cheaper than the mask).
                let causal = matches!(n.attrs.get("causal"), Some(llmc_ir::Attr::Bool(true)));
                let (Some(&m), Some(&q), Some(&k)) =
                    (n.inputs.get(3), n.inputs.first(), n.inputs.get(1))
                else {
                    continue;
                };
                let class = |v: ValueId| loaded.class_of.get(v.0 as usize).copied().flatten();
                let Some(mc) = class(m) else { continue };
                if causal || !super::causal::looks_triangular(eg, mc, 0) {
                    continue;
                }
                let (qs, ks) = (&g.ty(q).shape.0, &g.ty(k).shape.0);
                let (Some(s), Some(t)) = (qs.get(2), ks.get(2)) else {
                    continue;
                };
                let split = super::causal::split_causal(eg, mc, s, t, 0)
                    .and_then(|rest| super::causal::causal_fill(eg, &rest));
                if let Err(e) = split {
                    push(
                        &mut out,
                        "causal_mask",
                        Blocked {
                            pattern: "causal",
                            depth: 1,
                            msg: format!("mask {} kept additive: {e}", vname(m)),
                        },
                    );
                }
            }
            Op::Concat => {
                // rotate_half: concat(neg(slice(x)), slice(x)) — a rope candidate.
                let rotate_half = n.inputs.len() == 2
                    && n.inputs.iter().any(|&v| match g.value(v).def {
                        ValueDef::Node(p, _) => {
                            let pn = &g.nodes[p.0 as usize];
                            pn.op == Op::Neg
                                && pn.inputs.first().is_some_and(|&x| {
                                    matches!(g.value(x).def, ValueDef::Node(s, _)
                                        if g.nodes[s.0 as usize].op == Op::Slice)
                                })
                        }
                        _ => false,
                    });
                if rotate_half {
                    let tries = downstream(res, 2)
                        .into_iter()
                        .filter(|u| g.nodes[u.0 as usize].op == Op::Add)
                        .filter_map(enode)
                        .map(|e| super::rotary::match_rope(eg, &e).map(|_| ()))
                        .collect();
                    if let Some(b) = nearest(tries, "rope") {
                        push(&mut out, "rope", b);
                    }
                }
            }
            Op::ReduceMean => {
                let Some(&x) = n.inputs.first() else { continue };
                let src = match g.value(x).def {
                    ValueDef::Node(p, _) => Some(&g.nodes[p.0 as usize]),
                    _ => None,
                };
                let is_square = src.is_some_and(|p| match (p.op, &p.inputs[..]) {
                    (Op::Pow, [_, _]) => true,
                    (Op::Mul, [a, b]) => a == b,
                    _ => false,
                });
                let centring = users.get(res.0 as usize).into_iter().flatten().any(|u| {
                    let un = &g.nodes[u.0 as usize];
                    un.op == Op::Sub && un.inputs.get(1) == Some(&res)
                });
                if is_square {
                    // The variance of a layer norm is also a mean of a square: it is
                    // explained with its centring reduce_mean, not here.
                    let in_layer_norm = src.is_some_and(|p| {
                        p.inputs.first().is_some_and(|&d| match g.value(d).def {
                            ValueDef::Node(s, _) => g.nodes[s.0 as usize].op == Op::Sub,
                            _ => false,
                        })
                    });
                    if in_layer_norm {
                        continue;
                    }
                    let tries = downstream(res, 5)
                        .into_iter()
                        .filter(|u| g.nodes[u.0 as usize].op == Op::Mul)
                        .filter_map(enode)
                        .map(|e| match_rms_norm(eg, &e).map(|_| ()))
                        .collect();
                    if let Some(b) = nearest(tries, "rms_norm") {
                        push(&mut out, "rms_norm", b);
                    }
                } else if centring {
                    let tries = downstream(res, 8)
                        .into_iter()
                        .filter(|u| matches!(g.nodes[u.0 as usize].op, Op::Mul | Op::Add))
                        .filter_map(enode)
                        .map(|e| match_layer_norm(eg, &e).map(|_| ()))
                        .collect();
                    if let Some(b) = nearest(tries, "layer_norm") {
                        push(&mut out, "layer_norm", b);
                    }
                }
            }
            Op::MatMul => {
                let bias_add = users.get(res.0 as usize).into_iter().flatten().find(|u| {
                    let un = &g.nodes[u.0 as usize];
                    un.op == Op::Add
                        && un
                            .inputs
                            .iter()
                            .any(|&v| v != res && g.ty(v).shape.rank() == 1)
                });
                if let Some(u) = bias_add {
                    let un = &g.nodes[u.0 as usize];
                    let Some(&b) = un.inputs.iter().find(|&&v| v != res) else {
                        continue;
                    };
                    let class = |v: ValueId| loaded.class_of.get(v.0 as usize).copied().flatten();
                    let (Some(wc), Some(bc)) = (n.inputs.get(1).and_then(|&w| class(w)), class(b))
                    else {
                        continue;
                    };
                    if crate::egraph::rules::fusion::is_bias_epilogue(eg, wc, bc) {
                        continue; // fusable: left only when the pass did not run
                    }
                    let wty = n
                        .inputs
                        .get(1)
                        .map(|&w| g.ty(w).to_string())
                        .unwrap_or_default();
                    let reason = if !eg[wc].data.konst {
                        format!("operand 1 ({wty}) is computed at run time; linear needs a constant weight")
                    } else {
                        format!(
                            "weight {wty} and bias {} do not fit linear (a float, unquantized [k, n] weight and an [n] bias of its dtype)",
                            g.ty(b)
                        )
                    };
                    push(
                        &mut out,
                        "gemm_epilogue",
                        Blocked {
                            pattern: "linear",
                            depth: 1,
                            msg: reason,
                        },
                    );
                }
            }
            op if Act::of_node(op, &n.attrs).is_some() => {
                let class = |v: ValueId| loaded.class_of.get(v.0 as usize).copied().flatten();
                let Some(&x) = n.inputs.first() else { continue };
                let from_linear = match g.value(x).def {
                    ValueDef::Node(p, _) => g.nodes[p.0 as usize].op == Op::Linear,
                    _ => false,
                };
                let (Some(xc), Some(ac)) = (class(x), class(res)) else {
                    continue;
                };
                if from_linear {
                    if let Err(msg) = gemm::is_act_epilogue(eg, xc, ac) {
                        if gemm::feeds_glu(eg, ac) {
                            continue; // the glu candidate below reports it
                        }
                        push(
                            &mut out,
                            "gemm_epilogue",
                            Blocked {
                                pattern: "linear_act",
                                depth: 1,
                                msg,
                            },
                        );
                    }
                }
                // A product with this activation: a gated-unit candidate.
                for u in users.get(res.0 as usize).into_iter().flatten() {
                    let un = &g.nodes[u.0 as usize];
                    if un.op != Op::Mul {
                        continue;
                    }
                    let Some(mres) = un.outputs.first().copied() else {
                        continue;
                    };
                    let (Some(mc), Some(e)) = (class(mres), enode(*u)) else {
                        continue;
                    };
                    if let Err(msg) = gemm::match_glu(eg, mc, &e) {
                        if !from_linear && !gemm::is_gemm_output(eg, xc) {
                            continue; // not a GEMM's activation: not a GLU candidate
                        }
                        out.push(Explanation {
                            candidate: "glu",
                            node: vname(mres),
                            op: Op::Mul,
                            pattern: "glu",
                            reason: msg,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    for (x, reason) in crate::merge::blockers(module) {
        out.push(Explanation {
            candidate: "gemm_merge",
            node: x,
            op: Op::Linear,
            pattern: "linear over concatenated weights",
            reason,
        });
    }
    out
}

//! Comparisons, logical ops, `Where`, and the float classification tests (`IsNaN`,
//! `IsInf`), which become comparisons.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::{Attrs, Op};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("Equal", |cx| cx.binary(Op::Equal));
    r.add("Less", |cx| cx.binary(Op::Less));
    r.add("LessOrEqual", |cx| cx.binary(Op::LessEqual));
    r.add("Greater", |cx| cx.binary(Op::Greater));
    r.add("GreaterOrEqual", |cx| cx.binary(Op::GreaterEqual));
    r.add("And", |cx| cx.binary(Op::And));
    r.add("Or", |cx| cx.binary(Op::Or));
    r.add("Xor", |cx| cx.binary(Op::Xor));
    r.add("Not", |cx| cx.unary(Op::Not));
    r.add("Where", where_);
    r.add("IsNaN", is_nan);
    r.add("IsInf", is_inf);
}

fn where_(cx: &mut NodeCtx) -> R {
    let (c, a, b) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    Ok(vec![cx.op(Op::Where, &[c, a, b], Attrs::new())?])
}

/// NaN is the one value not equal to itself.
fn is_nan(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    cx.need_float(x, "input X")?;
    let e = cx.bin(Op::Equal, x, x)?;
    Ok(vec![cx.un(Op::Not, e)?])
}

fn is_inf(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    cx.need_float(x, "input X")?;
    let pos = cx.attr_i("detect_positive", 1)? != 0;
    let neg = cx.attr_i("detect_negative", 1)? != 0;
    let mut out: Option<V> = None;
    for (on, v) in [(pos, f64::INFINITY), (neg, f64::NEG_INFINITY)] {
        if !on {
            continue;
        }
        let c = cx.scalar_like(x, v);
        let e = cx.bin(Op::Equal, x, c)?;
        out = Some(match out {
            None => e,
            Some(o) => cx.bin(Op::Or, o, e)?,
        });
    }
    match out {
        Some(o) => Ok(vec![o]),
        None => {
            // Neither sign detected: all false, shaped like x.
            let f = cx.scalar_like(x, f64::NAN);
            let e = cx.bin(Op::Equal, x, f)?;
            Ok(vec![e])
        }
    }
}

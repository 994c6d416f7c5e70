//! Expressions: the Pratt parser that gives operators their precedence.

use std::sync::OnceLock;

use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};

use super::ast::{BinOp, Expr, ExprKind, UnOp};
use super::{Builder, Rule};
use crate::diag::{Code, Diagnostic};
use crate::source::Spanned;

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::op_or, Assoc::Left))
            .op(Op::infix(Rule::op_and, Assoc::Left))
            .op(Op::prefix(Rule::op_not))
            .op(Op::infix(Rule::op_eq, Assoc::Left)
                | Op::infix(Rule::op_ne, Assoc::Left)
                | Op::infix(Rule::op_lt, Assoc::Left)
                | Op::infix(Rule::op_le, Assoc::Left)
                | Op::infix(Rule::op_gt, Assoc::Left)
                | Op::infix(Rule::op_ge, Assoc::Left)
                | Op::infix(Rule::op_in, Assoc::Left)
                | Op::infix(Rule::op_not_in, Assoc::Left))
            .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
            .op(Op::infix(Rule::op_mul, Assoc::Left)
                | Op::infix(Rule::op_div, Assoc::Left)
                | Op::infix(Rule::op_mod, Assoc::Left))
            .op(Op::prefix(Rule::op_neg))
            .op(Op::postfix(Rule::index))
    })
}

impl Builder<'_> {
    pub(super) fn expr(&mut self, pair: Pair<Rule>) -> Expr {
        let file = self.file;
        let span_of = |s: pest::Span| crate::source::Span::new(file, s.start()..s.end());
        // The Pratt callbacks cannot all borrow `self`; diagnostics go through a cell.
        let me = std::cell::RefCell::new(self);
        let result = pratt()
            .map_primary(|p| me.borrow_mut().primary(p))
            .map_prefix(|op, e| {
                let span = span_of(op.as_span()).join(e.span);
                let u = if op.as_rule() == Rule::op_not {
                    UnOp::Not
                } else {
                    UnOp::Neg
                };
                Spanned::new(ExprKind::Unary(u, Box::new(e)), span)
            })
            .map_postfix(|e, op| {
                let span = e.span.join(span_of(op.as_span()));
                let inner = op
                    .into_inner()
                    .next()
                    .expect("grammar: index has an expression");
                let i = me.borrow_mut().expr(inner);
                Spanned::new(ExprKind::Index(Box::new(e), Box::new(i)), span)
            })
            .map_infix(|a, op, b| {
                let span = a.span.join(b.span);
                let op = match op.as_rule() {
                    Rule::op_or => BinOp::Or,
                    Rule::op_and => BinOp::And,
                    Rule::op_eq => BinOp::Eq,
                    Rule::op_ne => BinOp::Ne,
                    Rule::op_lt => BinOp::Lt,
                    Rule::op_le => BinOp::Le,
                    Rule::op_gt => BinOp::Gt,
                    Rule::op_ge => BinOp::Ge,
                    Rule::op_in => BinOp::In,
                    Rule::op_not_in => BinOp::NotIn,
                    Rule::op_add => BinOp::Add,
                    Rule::op_sub => BinOp::Sub,
                    Rule::op_mul => BinOp::Mul,
                    Rule::op_div => BinOp::Div,
                    _ => BinOp::Mod,
                };
                Spanned::new(ExprKind::Binary(op, Box::new(a), Box::new(b)), span)
            })
            .parse(pair.into_inner());
        result
    }

    fn primary(&mut self, pair: Pair<Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::int => match pair.as_str().parse::<i64>() {
                Ok(v) => ExprKind::Int(v),
                Err(_) => {
                    self.diags.push(
                        Diagnostic::new(Code::E0102, "integer literal does not fit in 64 bits")
                            .at(span, "too large"),
                    );
                    ExprKind::Int(0)
                }
            },
            Rule::float => match pair.as_str().parse::<f64>() {
                Ok(v) if v.is_finite() => ExprKind::Float(v),
                _ => {
                    self.diags.push(
                        Diagnostic::new(Code::E0102, "float literal is not finite")
                            .at(span, "out of range"),
                    );
                    ExprKind::Float(0.0)
                }
            },
            Rule::string => match self.string(pair) {
                Some(s) => ExprKind::Str(s.node),
                None => ExprKind::Str(String::new()),
            },
            Rule::kw_true => ExprKind::Bool(true),
            Rule::kw_false => ExprKind::Bool(false),
            Rule::kw_null => ExprKind::Null,
            Rule::list => ExprKind::List(pair.into_inner().map(|e| self.expr(e)).collect()),
            Rule::call => {
                let mut inner = pair.into_inner();
                let name = self.ident(inner.next().expect("grammar: call has a name"));
                ExprKind::Call(name, inner.map(|e| self.expr(e)).collect())
            }
            Rule::key_path => {
                ExprKind::Name(pair.into_inner().map(|p| p.as_str().to_string()).collect())
            }
            Rule::expr => return self.expr(pair),
            r => unreachable!("grammar: {r:?} is not a primary"),
        };
        Spanned::new(kind, span)
    }
}

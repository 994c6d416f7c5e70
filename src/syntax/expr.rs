//! Expressions: the Pratt parser that gives operators their precedence.

use std::sync::OnceLock;

use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};

use super::ast::{BinOp, Expr, ExprKind, TypeName, TypeTest, UnOp};
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
            // `a + 1 is int` tests the sum; `x is null == false` compares the test.
            .op(Op::postfix(Rule::type_test))
            .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
            .op(Op::infix(Rule::op_mul, Assoc::Left)
                | Op::infix(Rule::op_div, Assoc::Left)
                | Op::infix(Rule::op_mod, Assoc::Left))
            .op(Op::prefix(Rule::op_neg))
            .op(Op::postfix(Rule::index))
    })
}

/// How deep an expression tree may grow. Every later phase walks expressions
/// recursively (evaluation, display, drop), so the limit is enforced here, where the
/// tree is built, and no phase downstream needs its own guard.
pub const MAX_EXPR_DEPTH: u32 = 256;

/// An expression with the height of its tree.
type Deep = (Expr, u32);

impl Builder<'_> {
    pub(super) fn expr(&mut self, pair: Pair<Rule>) -> Expr {
        self.expr_depth(pair).0
    }

    /// Builds an expression and its depth. Past [`MAX_EXPR_DEPTH`] it reports E0104 once
    /// and folds the subtree into a placeholder, so the tree never grows beyond the limit.
    fn expr_depth(&mut self, pair: Pair<Rule>) -> Deep {
        let span = self.span(&pair);
        // pest's Pratt parser recurses once per prefix operator (and a `not` takes the
        // rest of a comparison chain as its operand), so count them before handing over.
        let prefixes = pair
            .clone()
            .into_inner()
            .filter(|p| matches!(p.as_rule(), Rule::op_not | Rule::op_neg))
            .count();
        if prefixes > MAX_EXPR_DEPTH as usize {
            return self.too_deep(span, "prefix operators");
        }
        let file = self.file;
        let span_of = |s: pest::Span| crate::source::Span::new(file, s.start()..s.end());
        // The Pratt callbacks cannot all borrow `self`; diagnostics go through a cell.
        let me = std::cell::RefCell::new(self);
        let grow = |kind: ExprKind, span, depth: u32| -> Deep {
            if depth > MAX_EXPR_DEPTH {
                me.borrow_mut().too_deep(span, "operators")
            } else {
                (Spanned::new(kind, span), depth)
            }
        };
        // Bound to a local: the parser's temporaries borrow the closures above.
        let built = pratt()
            .map_primary(|p| me.borrow_mut().primary(p))
            .map_prefix(|op, (e, d)| {
                let span = span_of(op.as_span()).join(e.span);
                let u = if op.as_rule() == Rule::op_not {
                    UnOp::Not
                } else {
                    UnOp::Neg
                };
                grow(ExprKind::Unary(u, Box::new(e)), span, d + 1)
            })
            .map_postfix(|(e, d), op| {
                let span = e.span.join(span_of(op.as_span()));
                if op.as_rule() == Rule::type_test {
                    let test = me.borrow_mut().type_test(op);
                    return grow(ExprKind::Is(Box::new(e), test), span, d + 1);
                }
                let inner = op
                    .into_inner()
                    .next()
                    .expect("grammar: index has an expression");
                let (i, di) = me.borrow_mut().expr_depth(inner);
                grow(
                    ExprKind::Index(Box::new(e), Box::new(i)),
                    span,
                    d.max(di) + 1,
                )
            })
            .map_infix(|(a, da), op, (b, db)| {
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
                let kind = ExprKind::Binary(op, Box::new(a), Box::new(b));
                grow(kind, span, da.max(db) + 1)
            })
            .parse(pair.into_inner());
        built
    }

    /// `is [not] type`; an unknown type name is E0106 and reads as `null`.
    fn type_test(&mut self, pair: Pair<Rule>) -> TypeTest {
        let negated = pair
            .clone()
            .into_inner()
            .any(|p| p.as_rule() == Rule::kw_not);
        let Some(name) = pair.into_inner().find(|p| p.as_rule() == Rule::type_name) else {
            unreachable!("grammar: `is` names a type")
        };
        let ty = TypeName::from_name(name.as_str()).unwrap_or_else(|| {
            let span = self.span(&name);
            self.diags.push(
                Diagnostic::new(Code::E0106, format!("unknown type `{}`", name.as_str()))
                    .at(span, "not a type `is` can test")
                    .with_note("the types are null, int, float, string, bool, list and object")
                    .suggest(name.as_str(), TypeName::ALL.iter().map(|(n, _)| *n)),
            );
            TypeName::Null
        });
        TypeTest { negated, ty }
    }

    /// Reports E0104 (once per file) and returns a leaf in place of the subtree.
    fn too_deep(&mut self, span: crate::source::Span, what: &str) -> Deep {
        if !self.too_deep_reported {
            self.too_deep_reported = true;
            self.diags.push(
                Diagnostic::new(
                    Code::E0104,
                    format!("expression nested more than {MAX_EXPR_DEPTH} deep"),
                )
                .at(span, format!("too many nested {what} in this expression"))
                .with_help("split it into `config` items, or write the value directly"),
            );
        }
        (Spanned::new(ExprKind::Int(0), span), 1)
    }

    /// Builds each child expression; the result is one deeper than the deepest child.
    fn exprs<'i>(&mut self, pairs: impl Iterator<Item = Pair<'i, Rule>>) -> (Vec<Expr>, u32) {
        let mut depth = 0;
        let items = pairs
            .map(|e| {
                let (e, d) = self.expr_depth(e);
                depth = depth.max(d);
                e
            })
            .collect();
        (items, depth + 1)
    }

    fn primary(&mut self, pair: Pair<Rule>) -> Deep {
        let span = self.span(&pair);
        let mut depth = 1;
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
            Rule::list => {
                let (items, d) = self.exprs(pair.into_inner());
                depth = d;
                ExprKind::List(items)
            }
            Rule::call => {
                let mut inner = pair.into_inner();
                let name = self.ident(inner.next().expect("grammar: call has a name"));
                let (args, d) = self.exprs(inner);
                depth = d;
                ExprKind::Call(name, args)
            }
            Rule::cond => {
                let parts = pair.into_inner().filter(|p| p.as_rule() == Rule::expr);
                let (mut parts, d) = self.exprs(parts);
                depth = d;
                match (parts.pop(), parts.pop(), parts.pop()) {
                    (Some(no), Some(yes), Some(c)) => {
                        ExprKind::Cond(Box::new(c), Box::new(yes), Box::new(no))
                    }
                    _ => unreachable!("grammar: `if` has three expressions"),
                }
            }
            Rule::key_path => {
                ExprKind::Name(pair.into_inner().map(|p| p.as_str().to_string()).collect())
            }
            Rule::expr => return self.expr_depth(pair),
            r => unreachable!("grammar: {r:?} is not a primary"),
        };
        (Spanned::new(kind, span), depth)
    }
}

#[cfg(test)]
mod tests {
    use crate::source::FileId;
    use crate::syntax::ast::ExprKind;

    /// The canonical text of `config x = <text>`, and its outermost node.
    fn shown(text: &str) -> (String, ExprKind) {
        let file = crate::syntax::parse(FileId(0), &format!("config x = {text}")).unwrap();
        let e = file.configs[0].alternatives[0].node.clone();
        (e.to_string(), e)
    }

    #[test]
    fn is_binds_between_comparison_and_sum() {
        let (text, e) = shown("a + 1 is not int");
        assert_eq!(text, "a + 1 is not int");
        assert!(matches!(e, ExprKind::Is(..)));
        let (text, e) = shown("a is null == false");
        assert_eq!(text, "a is null == false");
        assert!(matches!(e, ExprKind::Binary(..)));
        assert_eq!(shown("not a is null").0, "not a is null");
        assert_eq!(shown("-(a is int)").0, "-(a is int)");
    }

    #[test]
    fn else_branch_extends_and_display_brackets_it() {
        let (text, e) = shown("if a then b else c + 1");
        assert_eq!(text, "if a then b else c + 1");
        assert!(matches!(e, ExprKind::Cond(..)));
        let (text, e) = shown("(if a then b else c) + 1");
        assert_eq!(text, "(if a then b else c) + 1");
        assert!(matches!(e, ExprKind::Binary(..)));
        let nested = "if if a then b else c then d else if e then f else g";
        assert_eq!(shown(nested).0, nested);
    }
}

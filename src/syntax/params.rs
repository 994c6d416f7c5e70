//! Module parameters and instance arguments: `decl_params` → [`ast::DeclParam`]s,
//! `inst_args` → [`ast::Arg`]s. Names are checked against each other in
//! [`crate::resolve`], values in [`crate::check`].

use pest::iterators::Pair;

use super::ast::{Arg, DeclParam};
use super::{Builder, Rule};

impl Builder<'_> {
    pub(super) fn decl_params(&mut self, pair: Pair<Rule>) -> Vec<DeclParam> {
        pair.into_inner()
            .filter_map(|p| {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next()?);
                let default = inner.next().map(|e| self.expr(e));
                Some(DeclParam { name, default })
            })
            .collect()
    }

    pub(super) fn args(&mut self, pair: Pair<Rule>) -> Vec<Arg> {
        pair.into_inner()
            .filter_map(|p| {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next()?);
                let value = self.expr(inner.next()?);
                Some(Arg { name, value })
            })
            .collect()
    }
}

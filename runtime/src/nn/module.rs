//! The [`Module`] trait: named parameters, buffers and children, and everything built on
//! walking them (`state_dict`, `train`/`eval`, device moves, freezing, summaries).
//!
//! A module describes itself with two methods, [`Module::visit`] and
//! [`Module::visit_mut`], that report its own parameters and buffers and recurse into its
//! children through a [`Visitor`]. The visitor keeps the dotted path, so a parameter
//! reported as `weight` inside the child `fc1` of the child `encoder` is seen as
//! `encoder.fc1.weight`, the key PyTorch's `state_dict` would give it. Everything else
//! ([`ModuleExt`]) is written once on top of these two walks, and `#[derive(Module)]`
//! generates exactly the same two methods that the built-in layers write by hand.
//!
//! ```
//! use flint_runtime::nn::{Linear, Module, ModuleExt, Visitor, VisitorMut};
//!
//! struct Mlp {
//!     fc1: Linear,
//!     fc2: Linear,
//! }
//!
//! impl Module for Mlp {
//!     fn visit(&self, v: &mut Visitor<'_>) {
//!         v.child("fc1", &self.fc1);
//!         v.child("fc2", &self.fc2);
//!     }
//!     fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
//!         v.child("fc1", &mut self.fc1);
//!         v.child("fc2", &mut self.fc2);
//!     }
//! }
//!
//! let mlp = Mlp { fc1: Linear::new(4, 8, ()), fc2: Linear::new(8, 2, ()) };
//! let names: Vec<String> = mlp.named_parameters().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
//! assert_eq!(mlp.num_parameters(), 4 * 8 + 8 + 8 * 2 + 2);
//! ```

use crate::autograd::NoGradGuard;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A neural-network building block with named parameters, buffers and submodules.
///
/// Implement the two visits (or derive them with `#[derive(Module)]`); every other
/// operation comes from [`ModuleExt`]. Report entries in declaration order: that order is
/// the order of `parameters()`, of `state_dict()` and of the summary.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Flint module",
    label = "not a module",
    note = "in `#[derive(Module)]`, mark plain-data fields `#[module(skip)]` and tensors `#[module(param)]` or `#[module(buffer)]`"
)]
pub trait Module {
    /// Reports this module's parameters and buffers and recurses into its children.
    fn visit(&self, v: &mut Visitor<'_>);

    /// The same walk with mutable access, for device and dtype moves and loading.
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>);

    /// The name the summary prints, e.g. `Linear`. Defaults to the type's name without
    /// its path and generic arguments.
    fn type_name(&self) -> String {
        short_type_name(std::any::type_name::<Self>())
    }

    /// The hyper-parameters the summary prints in parentheses, e.g.
    /// `in_features=64, out_features=128, bias=true`.
    fn extra_repr(&self) -> String {
        String::new()
    }

    /// Sets this module's *own* training flag (children are reached by the walk). Layers
    /// that behave differently in training (dropout, batch norm) override this and
    /// [`Module::own_training`]; containers need not.
    fn set_own_training(&mut self, _training: bool) {}

    /// This module's own training flag, if it keeps one.
    fn own_training(&self) -> Option<bool> {
        None
    }
}

/// What a [`Visitor`] reports, with full dotted names.
pub enum Entry<'a> {
    /// A trainable tensor.
    Param {
        /// Dotted name, e.g. `encoder.fc1.weight`.
        name: &'a str,
        /// The parameter.
        tensor: &'a Tensor,
    },
    /// A tensor of state that is not trained (running statistics, counters).
    Buffer {
        /// Dotted name, e.g. `bn.running_mean`.
        name: &'a str,
        /// The buffer.
        tensor: &'a Tensor,
    },
    /// A child module is entered; its entries follow, then [`Entry::Exit`].
    Enter {
        /// Dotted path of the child, e.g. `encoder.layers.0`.
        name: &'a str,
        /// The child.
        module: &'a dyn Module,
        /// 1 for a child of the root, 2 for a grandchild, …
        depth: usize,
    },
    /// The walk leaves the child entered last.
    Exit {
        /// Dotted path of the child.
        name: &'a str,
    },
}

/// What a [`VisitorMut`] reports: like [`Entry`], with mutable access.
pub enum EntryMut<'a> {
    /// A trainable tensor.
    Param {
        /// Dotted name.
        name: &'a str,
        /// The parameter; a visitor may replace it.
        tensor: &'a mut Tensor,
    },
    /// A buffer.
    Buffer {
        /// Dotted name.
        name: &'a str,
        /// The buffer; a visitor may replace it.
        tensor: &'a mut Tensor,
    },
    /// A child module is entered.
    Enter {
        /// Dotted path of the child.
        name: &'a str,
        /// The child.
        module: &'a mut dyn Module,
    },
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The read-only walk over a module tree; see [`Module::visit`].
pub struct Visitor<'a> {
    path: String,
    depth: usize,
    f: &'a mut dyn FnMut(Entry<'_>),
}

impl<'a> Visitor<'a> {
    /// A walk that calls `f` for every entry, starting at the root (empty path).
    pub fn new(f: &'a mut dyn FnMut(Entry<'_>)) -> Visitor<'a> {
        Visitor {
            path: String::new(),
            depth: 0,
            f,
        }
    }

    /// Reports a parameter of the module being visited.
    pub fn param(&mut self, name: &str, tensor: &Tensor) {
        let name = join(&self.path, name);
        (self.f)(Entry::Param {
            name: &name,
            tensor,
        });
    }

    /// Reports a parameter that may be absent (an optional bias).
    pub fn param_opt(&mut self, name: &str, tensor: Option<&Tensor>) {
        if let Some(t) = tensor {
            self.param(name, t);
        }
    }

    /// Reports a buffer of the module being visited.
    pub fn buffer(&mut self, name: &str, tensor: &Tensor) {
        let name = join(&self.path, name);
        (self.f)(Entry::Buffer {
            name: &name,
            tensor,
        });
    }

    /// Enters the child `name`, walks it, and leaves it.
    pub fn child(&mut self, name: &str, module: &dyn Module) {
        let outer = std::mem::take(&mut self.path);
        self.path = join(&outer, name);
        self.depth += 1;
        (self.f)(Entry::Enter {
            name: &self.path,
            module,
            depth: self.depth,
        });
        module.visit(self);
        (self.f)(Entry::Exit { name: &self.path });
        self.depth -= 1;
        self.path = outer;
    }

    /// Enters the child `name` when it is present.
    pub fn child_opt(&mut self, name: &str, module: Option<&dyn Module>) {
        if let Some(m) = module {
            self.child(name, m);
        }
    }
}

/// The mutable walk over a module tree; see [`Module::visit_mut`].
pub struct VisitorMut<'a> {
    path: String,
    f: &'a mut dyn FnMut(EntryMut<'_>),
}

impl<'a> VisitorMut<'a> {
    /// A walk that calls `f` for every entry, starting at the root (empty path).
    pub fn new(f: &'a mut dyn FnMut(EntryMut<'_>)) -> VisitorMut<'a> {
        VisitorMut {
            path: String::new(),
            f,
        }
    }

    /// Reports a parameter of the module being visited.
    pub fn param(&mut self, name: &str, tensor: &mut Tensor) {
        let name = join(&self.path, name);
        (self.f)(EntryMut::Param {
            name: &name,
            tensor,
        });
    }

    /// Reports a parameter that may be absent.
    pub fn param_opt(&mut self, name: &str, tensor: Option<&mut Tensor>) {
        if let Some(t) = tensor {
            self.param(name, t);
        }
    }

    /// Reports a buffer of the module being visited.
    pub fn buffer(&mut self, name: &str, tensor: &mut Tensor) {
        let name = join(&self.path, name);
        (self.f)(EntryMut::Buffer {
            name: &name,
            tensor,
        });
    }

    /// Enters the child `name`, walks it, and leaves it.
    pub fn child(&mut self, name: &str, module: &mut dyn Module) {
        let outer = std::mem::take(&mut self.path);
        self.path = join(&outer, name);
        (self.f)(EntryMut::Enter {
            name: &self.path,
            module: &mut *module,
        });
        module.visit_mut(self);
        self.path = outer;
    }

    /// Enters the child `name` when it is present.
    pub fn child_opt(&mut self, name: &str, module: Option<&mut dyn Module>) {
        if let Some(m) = module {
            self.child(name, m);
        }
    }
}

/// A layer that maps one tensor to one tensor: what [`Sequential`](super::Sequential)
/// chains and what residual wrappers wrap.
///
/// Implement [`Forward::try_forward`]; [`Forward::forward`] panics with its error,
/// naming the layer, the expected and the actual shape, and the caller's line.
pub trait Forward {
    /// Applies the layer, or explains why the input does not fit.
    fn try_forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Applies the layer; panics when the input does not fit.
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::error::or_panic(self.try_forward(x))
    }
}

/// A module that is also a one-tensor layer; what containers store as `Box<dyn Layer>`.
pub trait Layer: Module + Forward {}
impl<T: Module + Forward> Layer for T {}

/// Checks that `x` has `rank` dims and the given trailing dims (`None` = any size);
/// the error names `layer` and both shapes. A helper for layers' `try_forward`.
pub fn check_input(
    layer: &'static str,
    x: &Tensor,
    expected: &str,
    ranks: &[usize],
    trailing: &[Option<usize>],
) -> Result<()> {
    let shape = x.shape();
    let rank_ok = ranks.contains(&shape.len());
    let tail_ok = shape.len() >= trailing.len()
        && trailing
            .iter()
            .rev()
            .zip(shape.iter().rev())
            .all(|(want, &got)| want.is_none_or(|w| w == got));
    if rank_ok && tail_ok {
        Ok(())
    } else {
        Err(Error::shape(
            layer,
            format!(
                "expected input of shape {expected}, got {}",
                fmt_shape(shape)
            ),
        ))
    }
}

/// Everything built on the two walks, for every [`Module`] (including `dyn Module`).
pub trait ModuleExt: Module {
    /// Every parameter with its dotted name, in declaration order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        walk(self, &mut |e| {
            if let Entry::Param { name, tensor } = e {
                out.push((name.to_string(), tensor.clone()));
            }
        });
        out
    }

    /// Every parameter (handles sharing the module's storage), for an optimizer.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// The parameters that require gradients (not frozen).
    fn trainable_parameters(&self) -> Vec<Tensor> {
        self.parameters()
            .into_iter()
            .filter(|t| t.requires_grad())
            .collect()
    }

    /// Every buffer with its dotted name.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        walk(self, &mut |e| {
            if let Entry::Buffer { name, tensor } = e {
                out.push((name.to_string(), tensor.clone()));
            }
        });
        out
    }

    /// Parameters and buffers by dotted name, in declaration order: PyTorch's
    /// `state_dict()` keys.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        walk(self, &mut |e| match e {
            Entry::Param { name, tensor } | Entry::Buffer { name, tensor } => {
                out.push((name.to_string(), tensor.clone()))
            }
            _ => {}
        });
        out
    }

    /// Copies `state` into the module's tensors in place (optimizers holding the
    /// parameters stay valid). Values are converted to each tensor's dtype. Checks
    /// everything before writing anything: missing keys (when `strict`), unexpected keys
    /// (when `strict`) and shape mismatches are all listed in one
    /// [`Error::StateDict`], and the module is left untouched.
    ///
    /// ```
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// let a = Linear::new(3, 2, ());
    /// let mut b = Linear::new(3, 2, ());
    /// b.load_state_dict(&a.state_dict(), true).unwrap();
    /// assert_eq!(a.weight.to_vec::<f32>(), b.weight.to_vec::<f32>());
    /// let mut c = Linear::new(4, 2, ());
    /// let err = c.load_state_dict(&a.state_dict(), true).unwrap_err();
    /// assert!(err.to_string().contains("weight: expected shape [2, 4], got [2, 3]"));
    /// ```
    fn load_state_dict(&mut self, state: &[(String, Tensor)], strict: bool) -> Result<()> {
        self.check_state_dict(state, strict)?;
        let given: BTreeMap<&str, &Tensor> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let _g = NoGradGuard::new();
        for (name, t) in self.state_dict() {
            if let Some(src) = given.get(name.as_str()) {
                let src = src.to_dtype(t.dtype()).try_to(t.device())?;
                t.try_copy_(&src)?;
            }
        }
        Ok(())
    }

    /// The checks of [`ModuleExt::load_state_dict`] without the writes: `Ok` when `state`
    /// would load, else the [`Error::StateDict`] listing every problem.
    ///
    /// ```
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// let a = Linear::new(3, 2, ());
    /// assert!(a.check_state_dict(&a.state_dict(), true).is_ok());
    /// let err = a.check_state_dict(&a.state_dict()[..1], true).unwrap_err();
    /// assert!(err.to_string().contains("missing bias"), "{err}");
    /// ```
    fn check_state_dict(&self, state: &[(String, Tensor)], strict: bool) -> Result<()> {
        let given: BTreeMap<&str, &Tensor> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, t) in self.state_dict() {
            match given.get(name.as_str()) {
                None if strict => problems.push(format!("missing {name}")),
                None => {}
                Some(src) if src.shape() != t.shape() => problems.push(format!(
                    "{name}: expected shape {}, got {}",
                    fmt_shape(t.shape()),
                    fmt_shape(src.shape())
                )),
                Some(_) => {}
            }
            seen.insert(name);
        }
        if strict {
            for k in given.keys() {
                if !seen.contains(*k) {
                    problems.push(format!("unexpected {k}"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::StateDict(problems.join("; ")));
        }
        Ok(())
    }

    /// Writes [`ModuleExt::state_dict`] (parameters and buffers by dotted name) to a
    /// safetensors file at `path`, atomically: an existing file is replaced only once the
    /// new one is completely on disk, and is left as it was if anything fails. The file
    /// loads back with [`ModuleExt::load`], and in PyTorch with
    /// `model.load_state_dict(safetensors.torch.load_file(path))` when the names match.
    /// See [`crate::io::save_tensors`] for the format and the errors.
    ///
    /// ```
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// let path = std::env::temp_dir().join(format!("flint-module-save-{}.safetensors", std::process::id()));
    /// let trained = Linear::new(3, 2, ());
    /// trained.save(&path).unwrap();
    ///
    /// let mut fresh = Linear::new(3, 2, ());
    /// fresh.load(&path).unwrap();
    /// assert_eq!(fresh.weight.to_vec::<f32>(), trained.weight.to_vec::<f32>());
    /// assert!(fresh.weight.requires_grad()); // still a trainable parameter
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::io::save_tensors(path, &self.state_dict())
    }

    /// Loads a safetensors file written by [`ModuleExt::save`] or by PyTorch
    /// (`safetensors.torch.save_file(model.state_dict(), path)`) into the module, strictly:
    /// [`ModuleExt::load_with`] with `strict = true`.
    ///
    /// Every missing, unexpected and wrongly-shaped tensor is listed by name in one
    /// [`Error::StateDict`] that also names the file, and then the module is left
    /// untouched. Values are copied into the existing tensors (an optimizer holding the
    /// parameters stays valid) and converted to their dtypes. A file that cannot be read
    /// is an [`Error::Io`] or [`Error::Checkpoint`].
    ///
    /// ```
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// let path = std::env::temp_dir().join(format!("flint-module-load-{}.safetensors", std::process::id()));
    /// Linear::new(3, 2, ()).save(&path).unwrap();
    ///
    /// let mut wider = Linear::new(4, 2, ());
    /// let before = wider.weight.to_vec::<f32>();
    /// let err = wider.load(&path).unwrap_err().to_string();
    /// assert!(err.contains("weight: expected shape [2, 4], got [2, 3]"));
    /// assert_eq!(wider.weight.to_vec::<f32>(), before); // untouched
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.load_with(path, true)
    }

    /// Loads a safetensors file into the module; with `strict = false`, tensors missing
    /// from the file keep their values and tensors of the file that the module lacks are
    /// ignored (for loading a backbone into a model with a new head). Shapes must match
    /// either way. See [`ModuleExt::load`].
    ///
    /// ```
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// let path = std::env::temp_dir().join(format!("flint-module-load-with-{}.safetensors", std::process::id()));
    /// let with_bias = Linear::new(3, 2, ());
    /// with_bias.save(&path).unwrap(); // weight and bias
    ///
    /// let mut no_bias = Linear::with_bias(3, 2, false, ());
    /// let err = no_bias.load(&path).unwrap_err().to_string();
    /// assert!(err.ends_with("unexpected bias"), "{err}");
    /// no_bias.load_with(&path, false).unwrap(); // takes the weight, ignores the bias
    /// assert_eq!(no_bias.weight.to_vec::<f32>(), with_bias.weight.to_vec::<f32>());
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    fn load_with(&mut self, path: impl AsRef<std::path::Path>, strict: bool) -> Result<()> {
        let path = path.as_ref();
        let state = crate::io::load_tensors(path)?;
        self.load_state_dict(&state, strict).map_err(|e| match e {
            Error::StateDict(msg) => Error::StateDict(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Puts the module and all its children in training mode.
    fn train(&mut self) {
        self.set_training(true)
    }

    /// Puts the module and all its children in evaluation mode (dropout off, batch norm
    /// on running statistics).
    fn eval(&mut self) {
        self.set_training(false)
    }

    /// Sets the training flag of the module and of all its children.
    fn set_training(&mut self, training: bool) {
        self.set_own_training(training);
        walk_mut(self, &mut |e| {
            if let EntryMut::Enter { module, .. } = e {
                module.set_own_training(training)
            }
        });
    }

    /// The module's training flag: its own, else that of its first descendant that keeps
    /// one; `true` for a module with no mode-dependent layer.
    fn is_training(&self) -> bool {
        if let Some(t) = self.own_training() {
            return t;
        }
        let mut found = None;
        walk(self, &mut |e| {
            if let Entry::Enter { module, .. } = e
                && found.is_none()
            {
                found = module.own_training();
            }
        });
        found.unwrap_or(true)
    }

    /// Moves every parameter and buffer to `device`. Parameters stay leaves that require
    /// gradients as before; build the optimizer after moving, as in PyTorch.
    fn to_device(&mut self, device: Device) -> Result<()> {
        map_tensors(self, &mut |t| t.try_to(device))
    }

    /// Converts every floating-point parameter and buffer to `dtype` (integer buffers,
    /// such as counters, keep theirs).
    fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        map_tensors(self, &mut |t| {
            Ok(if t.dtype().is_float() {
                t.to_dtype(dtype)
            } else {
                t.clone()
            })
        })
    }

    /// Sets `requires_grad` on every parameter: `false` freezes the module.
    fn requires_grad_(&self, on: bool) {
        for p in self.parameters() {
            p.requires_grad_(on);
        }
    }

    /// Freezes every parameter (no gradients; optimizers skip them).
    fn freeze(&self) {
        self.requires_grad_(false)
    }

    /// Unfreezes every parameter.
    fn unfreeze(&self) {
        self.requires_grad_(true)
    }

    /// Freezes the parameters whose dotted name is `prefix` or starts with `prefix.`;
    /// returns how many were frozen.
    fn freeze_prefix(&self, prefix: &str) -> usize {
        let mut n = 0;
        for (name, p) in self.named_parameters() {
            if name == prefix || name.starts_with(&format!("{prefix}.")) {
                p.requires_grad_(false);
                n += 1;
            }
        }
        n
    }

    /// Clears the gradient of every parameter.
    fn zero_grad(&self) {
        for p in self.parameters() {
            p.set_grad(None);
        }
    }

    /// The number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(Tensor::numel).sum()
    }

    /// The number of scalar parameters that require gradients.
    fn num_trainable_parameters(&self) -> usize {
        self.trainable_parameters().iter().map(Tensor::numel).sum()
    }

    /// A table of every parameter and buffer: name, shape, dtype, count, trainable.
    fn parameter_table(&self) -> String {
        let mut rows = Vec::new();
        for (name, t) in self.named_parameters() {
            let kind = if t.requires_grad() { "param" } else { "frozen" };
            rows.push((name, fmt_shape(t.shape()), t.dtype(), t.numel(), kind));
        }
        for (name, t) in self.named_buffers() {
            rows.push((name, fmt_shape(t.shape()), t.dtype(), t.numel(), "buffer"));
        }
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
        let mut s = format!(
            "{:<w$}  {:<16} {:<5} {:>10}  kind\n",
            "name", "shape", "dtype", "count"
        );
        for (name, shape, dtype, n, kind) in rows {
            s += &format!(
                "{name:<w$}  {shape:<16} {:<5} {n:>10}  {kind}\n",
                dtype.to_string()
            );
        }
        s += &format!(
            "total {} parameters ({} trainable)\n",
            self.num_parameters(),
            self.num_trainable_parameters()
        );
        s
    }

    /// The module tree as PyTorch's `print(model)` shows it.
    ///
    /// ```
    /// use flint_runtime::nn::{Linear, ModuleExt, ReLU, Sequential};
    /// let net = Sequential::new().add(Linear::new(4, 8, ())).add(ReLU).add(Linear::new(8, 2, ()));
    /// assert_eq!(net.summary(), "Sequential(\n  (0): Linear(in_features=4, out_features=8, bias=true)\n  (1): ReLU()\n  (2): Linear(in_features=8, out_features=2, bias=true)\n)");
    /// ```
    fn summary(&self) -> String {
        // Collect the tree first: whether a module prints on one line depends on whether
        // it has children.
        struct Node {
            label: String,
            repr: String,
            children: Vec<Node>,
        }
        let mut stack = vec![Node {
            label: String::new(),
            repr: format!("{}({})", self.type_name(), self.extra_repr()),
            children: Vec::new(),
        }];
        walk(self, &mut |e| match e {
            Entry::Enter { name, module, .. } => {
                let label = name.rsplit('.').next().unwrap_or(name).to_string();
                stack.push(Node {
                    label,
                    repr: format!("{}({})", module.type_name(), module.extra_repr()),
                    children: Vec::new(),
                });
            }
            Entry::Exit { .. } if stack.len() > 1 => {
                let done = stack.pop().expect("stack has a child");
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(done);
                }
            }
            _ => {}
        });
        fn render(n: &Node, indent: usize, out: &mut String) {
            if n.children.is_empty() {
                out.push_str(&n.repr);
                return;
            }
            let head = n.repr.split('(').next().unwrap_or("");
            let extra = &n.repr[head.len() + 1..n.repr.len() - 1];
            out.push_str(head);
            out.push_str("(\n");
            let pad = " ".repeat(indent + 2);
            if !extra.is_empty() {
                out.push_str(&format!("{pad}{extra}\n"));
            }
            for c in &n.children {
                out.push_str(&format!("{pad}({}): ", c.label));
                render(c, indent + 2, out);
                out.push('\n');
            }
            out.push_str(&" ".repeat(indent));
            out.push(')');
        }
        let mut out = String::new();
        render(&stack[0], 0, &mut out);
        out
    }
}

impl<M: Module + ?Sized> ModuleExt for M {}

/// Walks `m` read-only, calling `f` for every entry.
pub fn walk<M: Module + ?Sized>(m: &M, f: &mut dyn FnMut(Entry<'_>)) {
    let mut v = Visitor::new(f);
    m.visit(&mut v);
}

/// Walks `m` mutably, calling `f` for every entry.
pub fn walk_mut<M: Module + ?Sized>(m: &mut M, f: &mut dyn FnMut(EntryMut<'_>)) {
    let mut v = VisitorMut::new(f);
    m.visit_mut(&mut v);
}

/// Replaces every parameter and buffer by `f(tensor)`; parameters stay leaves with their
/// `requires_grad`. Stops at the first error.
fn map_tensors<M: Module + ?Sized>(
    m: &mut M,
    f: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let mut err = None;
    let _g = NoGradGuard::new();
    walk_mut(m, &mut |e| {
        if err.is_some() {
            return;
        }
        match e {
            EntryMut::Param { tensor, .. } => match f(&tensor.detach()) {
                Ok(t) => {
                    let rg = tensor.requires_grad();
                    *tensor = t.detach().requires_grad_(rg);
                }
                Err(e) => err = Some(e),
            },
            EntryMut::Buffer { tensor, .. } => match f(tensor) {
                Ok(t) => *tensor = t,
                Err(e) => err = Some(e),
            },
            EntryMut::Enter { .. } => {}
        }
    });
    err.map_or(Ok(()), Err)
}

/// `flint::nn::Linear` → `Linear`, `Vec<flint::nn::Linear>` → `Vec`.
fn short_type_name(full: &str) -> String {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// Writes the [`ModuleExt::summary`] of a module; what `Display` of a module prints.
pub struct Summary<'a, M: Module + ?Sized>(pub &'a M);

impl<M: Module + ?Sized> fmt::Display for Summary<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.summary())
    }
}

/// A list of modules, named `0`, `1`, … like PyTorch's `ModuleList`.
impl<M: Module> Module for Vec<M> {
    fn visit(&self, v: &mut Visitor<'_>) {
        for (i, m) in self.iter().enumerate() {
            v.child(&i.to_string(), m);
        }
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        for (i, m) in self.iter_mut().enumerate() {
            v.child(&i.to_string(), m);
        }
    }
    fn type_name(&self) -> String {
        "ModuleList".into()
    }
}

/// A fixed-size list of modules, named like a `Vec`.
impl<M: Module, const N: usize> Module for [M; N] {
    fn visit(&self, v: &mut Visitor<'_>) {
        for (i, m) in self.iter().enumerate() {
            v.child(&i.to_string(), m);
        }
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        for (i, m) in self.iter_mut().enumerate() {
            v.child(&i.to_string(), m);
        }
    }
    fn type_name(&self) -> String {
        "ModuleList".into()
    }
}

/// A boxed module is the module.
impl<M: Module + ?Sized> Module for Box<M> {
    fn visit(&self, v: &mut Visitor<'_>) {
        (**self).visit(v)
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        (**self).visit_mut(v)
    }
    fn type_name(&self) -> String {
        (**self).type_name()
    }
    fn extra_repr(&self) -> String {
        (**self).extra_repr()
    }
    fn set_own_training(&mut self, training: bool) {
        (**self).set_own_training(training)
    }
    fn own_training(&self) -> Option<bool> {
        (**self).own_training()
    }
}

/// Implements `Display` (the summary) for module types.
#[macro_export]
macro_rules! impl_module_display {
    ($($t:ty),* $(,)?) => {$(
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&$crate::nn::Summary(self), f)
            }
        }
    )*};
}

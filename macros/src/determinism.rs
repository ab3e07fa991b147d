//! Compile-time detection of calls that break deterministic replay inside a workflow body.

use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{Expr, ExprPath, Ident, ItemUse, Macro, Path, PathSegment, Token, UseTree};

/// Turns `use a::{b, c::d}` into the paths `a::b` and `a::c::d`.
fn flatten_use(tree: &UseTree, prefix: &mut Vec<Ident>, out: &mut Vec<Path>) {
    let to_path = |idents: &[Ident]| Path {
        leading_colon: None,
        segments: idents.iter().cloned().map(PathSegment::from).collect(),
    };
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.clone());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) => {
            prefix.push(n.ident.clone());
            out.push(to_path(prefix));
            prefix.pop();
        }
        UseTree::Rename(r) => {
            prefix.push(r.ident.clone());
            out.push(to_path(prefix));
            prefix.pop();
        }
        UseTree::Glob(_) => out.push(to_path(prefix)),
        UseTree::Group(g) => {
            for item in &g.items {
                flatten_use(item, prefix, out);
            }
        }
    }
}

/// One forbidden call and what to use instead.
struct Rule {
    /// Matched against the path's last segments.
    suffix: &'static [&'static str],
    what: &'static str,
    instead: &'static str,
}

const CLOCK: &str = "use `ctx.now().await`, which is recorded and replays the same value";
const RANDOM: &str = "use `ctx.random().await` or `ctx.uuid().await`, which are recorded";
const SPAWN: &str = "run concurrent steps with `futures::join!` over `ctx` calls; a spawned task is invisible to replay";
const SLEEP: &str = "use `ctx.sleep(..).await` or `ctx.sleep_until(..).await`, durable timers that survive restarts";
const IO: &str =
    "do I/O in an #[activity] and call it with `ctx.activity(..)`, so its result is recorded";

const RULES: &[Rule] = &[
    Rule {
        suffix: &["SystemTime", "now"],
        what: "`SystemTime::now()` reads the wall clock",
        instead: CLOCK,
    },
    Rule {
        suffix: &["Instant", "now"],
        what: "`Instant::now()` reads the clock",
        instead: CLOCK,
    },
    Rule {
        suffix: &["Utc", "now"],
        what: "`Utc::now()` reads the wall clock",
        instead: CLOCK,
    },
    Rule {
        suffix: &["Local", "now"],
        what: "`Local::now()` reads the wall clock",
        instead: CLOCK,
    },
    Rule {
        suffix: &["OffsetDateTime", "now_utc"],
        what: "`OffsetDateTime::now_utc()` reads the wall clock",
        instead: CLOCK,
    },
    Rule {
        suffix: &["thread_rng"],
        what: "`thread_rng()` is random",
        instead: RANDOM,
    },
    Rule {
        suffix: &["rand", "rng"],
        what: "`rand::rng()` is random",
        instead: RANDOM,
    },
    Rule {
        suffix: &["rand", "random"],
        what: "`rand::random()` is random",
        instead: RANDOM,
    },
    Rule {
        suffix: &["OsRng"],
        what: "`OsRng` is random",
        instead: RANDOM,
    },
    Rule {
        suffix: &["Uuid", "new_v4"],
        what: "`Uuid::new_v4()` is random",
        instead: RANDOM,
    },
    Rule {
        suffix: &["Uuid", "now_v7"],
        what: "`Uuid::now_v7()` reads the clock",
        instead: RANDOM,
    },
    Rule {
        suffix: &["tokio", "spawn"],
        what: "`tokio::spawn` starts a task outside the workflow",
        instead: SPAWN,
    },
    Rule {
        suffix: &["task", "spawn"],
        what: "`task::spawn` starts a task outside the workflow",
        instead: SPAWN,
    },
    Rule {
        suffix: &["spawn_blocking"],
        what: "`spawn_blocking` starts a task outside the workflow",
        instead: SPAWN,
    },
    Rule {
        suffix: &["thread", "spawn"],
        what: "`thread::spawn` starts a thread outside the workflow",
        instead: SPAWN,
    },
    Rule {
        suffix: &["time", "sleep"],
        what: "`tokio::time::sleep` waits on the wall clock",
        instead: SLEEP,
    },
    Rule {
        suffix: &["time", "sleep_until"],
        what: "`tokio::time::sleep_until` waits on the wall clock",
        instead: SLEEP,
    },
    Rule {
        suffix: &["yield_now"],
        what:
            "`yield_now` wakes the workflow only after its poll, so the run and its replays would take it for stuck",
        instead: "leave it out: a workflow only waits on `ctx` calls",
    },
    Rule {
        suffix: &["thread", "sleep"],
        what: "`thread::sleep` blocks on the wall clock",
        instead: SLEEP,
    },
    Rule {
        suffix: &["fs"],
        what: "file-system access is I/O",
        instead: IO,
    },
    Rule {
        suffix: &["File", "open"],
        what: "`File::open` is I/O",
        instead: IO,
    },
    Rule {
        suffix: &["File", "create"],
        what: "`File::create` is I/O",
        instead: IO,
    },
    Rule {
        suffix: &["TcpStream"],
        what: "`TcpStream` is network I/O",
        instead: IO,
    },
    Rule {
        suffix: &["TcpListener"],
        what: "`TcpListener` is network I/O",
        instead: IO,
    },
    Rule {
        suffix: &["UdpSocket"],
        what: "`UdpSocket` is network I/O",
        instead: IO,
    },
    Rule {
        suffix: &["reqwest"],
        what: "`reqwest` does network I/O",
        instead: IO,
    },
    Rule {
        suffix: &["env", "var"],
        what: "`env::var` reads the host's environment, which can differ on replay",
        instead: "read configuration in an activity or pass it in the workflow's input",
    },
];

/// Single-name rules that match anywhere in a path rather than at its end.
const MODULE_RULES: &[&str] = &["reqwest", "TcpStream", "TcpListener", "UdpSocket"];

#[derive(Default)]
pub(crate) struct Checker {
    errors: Vec<syn::Error>,
}

impl Checker {
    pub(crate) fn into_error(self) -> Option<syn::Error> {
        self.errors.into_iter().reduce(|mut all, next| {
            all.combine(next);
            all
        })
    }

    fn check(&mut self, path: &Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        for rule in RULES {
            let hit = if rule.suffix == ["fs"] {
                // `std::fs::read`, `tokio::fs::write`, or `fs::read` after `use std::fs`;
                // not a user module that happens to be called `fs` (`crate::fs::..`).
                let qualified = segments.windows(2).any(|w| {
                    w[1] == "fs" && matches!(w[0].as_str(), "std" | "tokio" | "async_std")
                });
                qualified || (segments.len() > 1 && segments[0] == "fs")
            } else if rule.suffix.len() == 1 && MODULE_RULES.contains(&rule.suffix[0]) {
                // Type and crate rules match anywhere in the path
                // (`tokio::net::TcpStream::connect`, `reqwest::get`).
                segments.iter().any(|s| s == rule.suffix[0])
            } else {
                segments.len() >= rule.suffix.len()
                    && segments[segments.len() - rule.suffix.len()..]
                        .iter()
                        .zip(rule.suffix)
                        .all(|(a, b)| a == b)
            };
            if hit {
                self.errors.push(syn::Error::new_spanned(
                    path,
                    format!(
                        "non-deterministic call in a #[workflow]: {}; {}",
                        rule.what, rule.instead
                    ),
                ));
                return;
            }
        }
    }
}

impl<'ast> Visit<'ast> for Checker {
    fn visit_expr_path(&mut self, node: &'ast ExprPath) {
        self.check(&node.path);
        visit::visit_expr_path(self, node);
    }

    fn visit_macro(&mut self, node: &'ast Macro) {
        self.check(&node.path);
        // Most macros in workflow code take expressions (`futures::join!`, `format!`,
        // `assert!`); check those too. Others (`select!` arms) are skipped, not guessed at.
        if let Ok(args) =
            Punctuated::<Expr, Token![,]>::parse_terminated.parse2(node.tokens.clone())
        {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }

    fn visit_item_use(&mut self, node: &'ast ItemUse) {
        // `use std::thread::sleep;` inside the body would hide the call's origin.
        let mut paths = Vec::new();
        flatten_use(&node.tree, &mut Vec::new(), &mut paths);
        for path in paths {
            self.check(&path);
        }
    }
}

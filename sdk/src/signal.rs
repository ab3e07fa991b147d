//! Signals declared once, with their name and body type, and used on both sides.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cairn_runtime::codec::{encode, Codec, Payload as Bytes};

use crate::{Cancelled, Ctx, Error, Payload, Runtime};

/// A signal: its name and the type of its body, declared once and used by the sender and
/// the workflow alike, so the two cannot disagree.
///
/// ```
/// use cairn::{workflow, Ctx, Signal, WorkflowError};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// pub struct Address { street: String, city: String }
///
/// pub const NEW_ADDRESS: Signal<Address> = Signal::new("new_address");
///
/// #[workflow]
/// async fn deliver(ctx: Ctx, order: String) -> Result<String, WorkflowError> {
///     let address = ctx.receive(NEW_ADDRESS).await?;
///     Ok(format!("{order} to {}", address.city))
/// }
/// // The host: `rt.send("order-7", NEW_ADDRESS, &address).await?`, and
/// // `Runtime::builder().signal(NEW_ADDRESS)` to accept it as JSON too (`send_json`).
/// ```
pub struct Signal<T> {
    name: &'static str,
    body: PhantomData<fn() -> T>,
}

impl<T> Clone for Signal<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Signal<T> {}

impl<T> std::fmt::Debug for Signal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signal({:?}: {})", self.name, std::any::type_name::<T>())
    }
}

impl<T: Payload> Signal<T> {
    /// The signal called `name`, with a body of type `T`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            body: PhantomData,
        }
    }

    /// Its name, as recorded in history.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// Turns a JSON body into the recorded payload of one declared signal, or says why not.
pub(crate) type BodyCheck =
    Arc<dyn Fn(&dyn Codec, serde_json::Value) -> Result<Bytes, String> + Send + Sync>;

/// The signals a runtime accepts as JSON, by name.
#[derive(Clone, Default)]
pub(crate) struct Declared(pub(crate) Arc<HashMap<&'static str, (&'static str, BodyCheck)>>);

impl std::fmt::Debug for Declared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Declared {
    /// Declares `signal`; a second declaration of its name must have the same type.
    pub(crate) fn add<T: Payload>(&mut self, signal: Signal<T>) -> Result<(), Error> {
        self.add_named::<T>("signal", signal.name)
    }

    /// Declares `what` (a signal, an update, a workflow's input) called `name` with body
    /// type `T`; a second declaration of the name must have the same type.
    pub(crate) fn add_named<T: Payload>(
        &mut self,
        what: &str,
        name: &'static str,
    ) -> Result<(), Error> {
        let type_name = std::any::type_name::<T>();
        if let Some((existing, _)) = self.0.get(name) {
            if *existing != type_name {
                return Err(Error::InvalidArgument(format!(
                    "{what} `{name}` is declared twice, with bodies `{existing}` and `{type_name}`; give each its own name"
                )));
            }
            return Ok(());
        }
        let check: BodyCheck = Arc::new(|codec: &dyn Codec, json: serde_json::Value| {
            let body: T = serde_json::from_value(json).map_err(|err| err.to_string())?;
            encode(codec, &body).map_err(|err| err.to_string())
        });
        Arc::make_mut(&mut self.0).insert(name, (type_name, check));
        Ok(())
    }
}

impl Declared {
    /// The recorded payload of `what` `name` with JSON `body`, or why not.
    pub(crate) fn check(
        &self,
        codec: &dyn Codec,
        what: &str,
        name: &str,
        body: serde_json::Value,
    ) -> Result<Bytes, Error> {
        let Some((type_name, check)) = self.0.get(name) else {
            return Err(Error::InvalidArgument(format!(
                "no {what} `{name}` is declared on this runtime; declare it with `RuntimeBuilder::{what}`"
            )));
        };
        check(codec, body).map_err(|err| {
            Error::InvalidArgument(format!(
                "the body of {what} `{name}` does not decode as `{type_name}`: {err}; nothing was recorded"
            ))
        })
    }

    /// Whether `name` is declared.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Which of two signals came first ([`Ctx::receive_either`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<A, B> {
    /// The first signal, with its body.
    First(A),
    /// The second signal, with its body.
    Second(B),
}

impl Ctx {
    /// Waits for whichever of two signals comes first ("approved" or "rejected"). The
    /// winner is recorded, so replay takes it again; the other signal is not consumed:
    /// if it arrives (or had arrived too), a later wait for it receives it.
    ///
    /// ```
    /// use cairn::{workflow, Ctx, Received, Signal, WorkflowError};
    ///
    /// const APPROVED: Signal<String> = Signal::new("approved");
    /// const REJECTED: Signal<String> = Signal::new("rejected");
    ///
    /// #[workflow]
    /// async fn review(ctx: Ctx, claim: String) -> Result<String, WorkflowError> {
    ///     Ok(match ctx.receive_either(APPROVED, REJECTED).await? {
    ///         Received::First(by) => format!("{claim} approved by {by}"),
    ///         Received::Second(why) => format!("{claim} rejected: {why}"),
    ///     })
    /// }
    /// ```
    ///
    /// # Errors
    /// [`Cancelled`] if the instance is cancelled while it waits.
    ///
    /// # Cancel safety
    /// As two [`Ctx::receive`] calls: a signal is taken only by the wait that returns it.
    pub fn receive_either<A: Payload, B: Payload>(
        &self,
        first: Signal<A>,
        second: Signal<B>,
    ) -> impl std::future::Future<Output = Result<Received<A, B>, Cancelled>> + Send + 'static {
        // Both steps are numbered now, first before second, on every run.
        let first = Box::pin(self.receive(first));
        let second = Box::pin(self.receive(second));
        async move {
            // Biased to the first when both are ready: the same choice on every run, and
            // a replay follows the recorded winner anyway (the loser is recorded as
            // abandoned and never resolves again).
            match futures::future::select(first, second).await {
                futures::future::Either::Left((body, _)) => body.map(Received::First),
                futures::future::Either::Right((body, _)) => body.map(Received::Second),
            }
        }
    }

    /// Waits for the next `signal` and returns its body; see [`Ctx::signal`].
    ///
    /// # Errors
    /// [`Cancelled`] if the instance is cancelled while it waits.
    pub fn receive<T: Payload>(
        &self,
        signal: Signal<T>,
    ) -> impl std::future::Future<Output = Result<T, Cancelled>> + Send + 'static {
        self.signal(signal.name())
    }

    /// Waits for the next `signal` for at most `timeout`; see [`Ctx::signal_or_timeout`].
    ///
    /// # Errors
    /// [`Cancelled`] if the instance is cancelled while it waits.
    pub fn receive_or_timeout<T: Payload>(
        &self,
        signal: Signal<T>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Option<T>, Cancelled>> + Send + 'static {
        self.signal_or_timeout(signal.name(), timeout)
    }
}

impl Runtime {
    /// Sends `signal` with `body` to instance `id`; see [`Runtime::signal`].
    ///
    /// # Errors
    /// As [`Runtime::signal`].
    ///
    /// # Durability
    /// On return the signal is on disk and will be delivered, crash or not.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the signal is still recorded (unless refused) and
    /// reaches the run; dropped before it was polled, nothing was sent.
    pub async fn send<T: Payload>(
        &self,
        id: &str,
        signal: Signal<T>,
        body: &T,
    ) -> Result<(), Error> {
        self.signal(id, signal.name(), body).await
    }

    /// Sends the signal called `name` with a JSON `body` (from an HTTP request, a CLI):
    /// the body is checked against the type the signal was declared with
    /// ([`RuntimeBuilder::signal`](crate::RuntimeBuilder::signal)) **before** anything is
    /// recorded.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`CAIRN-E0014`) naming the signal and what is wrong,
    /// with nothing recorded, when no signal of that name is declared or the body does
    /// not decode as its type; otherwise as [`Runtime::signal`].
    ///
    /// # Durability
    /// On return the signal is on disk and will be delivered, crash or not.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the signal is still recorded (unless refused) and
    /// reaches the run; dropped before it was polled, nothing was sent.
    pub async fn send_json(
        &self,
        id: &str,
        name: &str,
        body: serde_json::Value,
    ) -> Result<(), Error> {
        let payload = self.check_signal_json(name, body)?;
        self.engine().signal(id, name, payload).await
    }

    /// The recorded payload of declared signal `name` with JSON `body`, or why not.
    pub(crate) fn check_signal_json(
        &self,
        name: &str,
        body: serde_json::Value,
    ) -> Result<Bytes, Error> {
        self.signals()
            .check(self.engine().codec(), "signal", name, body)
    }
}

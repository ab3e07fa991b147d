//! Typed messages beyond signals: signals sent once under a dedupe key, updates (a
//! request the workflow answers, the caller waiting for the answer) and queries (the
//! latest value a workflow published, read without running it). Each is declared once,
//! with its name and types, and used on both sides.

use std::marker::PhantomData;

use cairn_runtime::codec::{decode, encode};

use crate::ctx::{decode_step, encode_step};
use crate::{Acting, Cancelled, Ctx, Error, Payload, Runtime, Signal};

pub use cairn_runtime::{Sent, MESSAGE_KEY_BYTES_MAX};

/// An update: a request into a running workflow that the workflow answers, declared
/// once with its name, request type `I` and response type `O`.
///
/// The workflow takes requests where it is ready for them ([`Ctx::update`], often raced
/// in a `select!` against its other work) and answers each with
/// [`UpdateRequest::accept`] or [`UpdateRequest::reject`]; the caller of
/// [`Runtime::update`] gets the answer once it is durable. An update shares its name
/// space with signals: do not declare a signal of the same name.
///
/// ```
/// use cairn::{workflow, Ctx, Update, WorkflowError};
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone)]
/// pub struct Address { pub street: String, pub city: String }
///
/// pub const CHANGE_ADDRESS: Update<Address, String> = Update::new("change_address");
///
/// #[workflow]
/// async fn delivery(ctx: Ctx, order: String) -> Result<String, WorkflowError> {
///     let request = ctx.update(CHANGE_ADDRESS).await?;
///     if request.input().city.is_empty() {
///         request.reject(&ctx, "a city is required").await;
///         return Ok(format!("{order}: address unchanged"));
///     }
///     let city = request.input().city.clone();
///     request.accept(&ctx, &format!("delivering to {city}")).await;
///     Ok(format!("{order} to {city}"))
/// }
/// // The host: `rt.update("order-7", CHANGE_ADDRESS, &address).await?` returns
/// // `Ok("delivering to ...")` once the answer is on disk.
/// ```
pub struct Update<I, O> {
    name: &'static str,
    types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for Update<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for Update<I, O> {}

impl<I, O> std::fmt::Debug for Update<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Update({:?}: {} -> {})",
            self.name,
            std::any::type_name::<I>(),
            std::any::type_name::<O>()
        )
    }
}

impl<I: Payload, O: Payload> Update<I, O> {
    /// The update called `name`, taking `I` and answering `O`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }

    /// Its name, as recorded in history.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The signal its requests travel as (same name, body `I`).
    pub const fn request_signal(&self) -> Signal<I> {
        Signal::new(self.name)
    }
}

/// An update's request as the workflow receives it; answer it with
/// [`UpdateRequest::accept`] or [`UpdateRequest::reject`].
#[derive(Debug)]
#[must_use = "the caller waits until the request is answered"]
pub struct UpdateRequest<I, O> {
    name: &'static str,
    key: String,
    input: I,
    response: PhantomData<fn() -> O>,
}

impl<I: Payload, O: Payload> UpdateRequest<I, O> {
    /// What the caller sent.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// The request's key (its update id).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Accepts the request with `response`, recorded as a step; the caller gets it once
    /// it is durable.
    ///
    /// # Cancel safety
    /// The step number is taken when this is called; see [dropping a step's
    /// future](Ctx#dropping-a-steps-future).
    pub fn accept(
        self,
        ctx: &Ctx,
        response: &O,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let raw = ctx.raw().clone();
        let step = raw.next_step();
        let encoded = encode_step(&raw, step, response);
        async move {
            match encoded {
                Ok(body) => raw.answer(step, self.name, &self.key, Ok(body)).await,
                Err(err) => raw.abort(err).await,
            }
        }
    }

    /// Rejects the request with `reason`, recorded as a step; the caller gets
    /// [`Rejected`] once it is durable.
    ///
    /// # Cancel safety
    /// As [`UpdateRequest::accept`].
    pub fn reject(
        self,
        ctx: &Ctx,
        reason: impl Into<String>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let raw = ctx.raw().clone();
        let step = raw.next_step();
        let reason = reason.into();
        async move { raw.answer(step, self.name, &self.key, Err(reason)).await }
    }
}

/// The workflow rejected an update; the reason is its own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the update was rejected: {0}")]
pub struct Rejected(pub String);

/// A query: a value a workflow publishes under a name ([`Ctx::publish`]) and anyone
/// allowed to read the instance reads ([`Runtime::query`]) from its history, without
/// running the workflow. Declared once with its name and type.
///
/// ```
/// use cairn::{workflow, Ctx, Query, WorkflowError};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// pub struct Progress { pub packed: u32, pub of: u32 }
///
/// pub const PROGRESS: Query<Progress> = Query::new("progress");
///
/// #[workflow]
/// async fn packing(ctx: Ctx, items: u32) -> Result<u32, WorkflowError> {
///     for packed in 1..=items {
///         ctx.publish(PROGRESS, &Progress { packed, of: items }).await;
///     }
///     Ok(items)
/// }
/// // The host: `rt.query("pack-7", PROGRESS).await?` -> `Some(Progress { .. })`.
/// ```
pub struct Query<T> {
    name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for Query<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Query<T> {}

impl<T> std::fmt::Debug for Query<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query({:?}: {})", self.name, std::any::type_name::<T>())
    }
}

impl<T: Payload> Query<T> {
    /// The query called `name`, with values of type `T`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: PhantomData,
        }
    }

    /// Its name, as recorded in history.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl Ctx {
    /// Waits for the next request of `update` and returns it, to be answered with
    /// [`UpdateRequest::accept`] or [`UpdateRequest::reject`]. Requests wait in the
    /// inbox like signals, in the order they were sent, each taken by one wait; a wait
    /// may be raced in a `select!` against the workflow's other steps.
    ///
    /// # Errors
    /// [`Cancelled`] if the instance is cancelled while it waits.
    ///
    /// # Cancel safety
    /// As [`Ctx::signal`]: a request is taken only by the wait that returns it.
    pub fn update<I: Payload, O: Payload>(
        &self,
        update: Update<I, O>,
    ) -> impl std::future::Future<Output = Result<UpdateRequest<I, O>, Cancelled>> + Send + 'static
    {
        let raw = self.raw().clone();
        let step = raw.next_step();
        async move {
            let taken = raw.wait_keyed_signal(step, update.name, None).await?;
            let Some((payload, key)) = taken else {
                // A wait without a deadline only returns with a request.
                return std::future::pending().await;
            };
            let input = match decode_step::<I>(&raw, step, &payload) {
                Ok(input) => input,
                Err(err) => return raw.abort(err).await,
            };
            let Some(key) = key else {
                let err = Error::InvalidArgument(format!(
                    "step {step} took a signal `{}` sent without a key, but waits for an update of that name; send updates with `Runtime::update`",
                    update.name
                ));
                return raw.abort(err).await;
            };
            Ok(UpdateRequest {
                name: update.name,
                key,
                input,
                response: PhantomData,
            })
        }
    }

    /// Publishes `value` under `query`, recorded as a step: a query of that name reads
    /// the latest value from the history, without running the workflow.
    ///
    /// # Cancel safety
    /// The step number is taken when `publish` is called; see [dropping a step's
    /// future](Ctx#dropping-a-steps-future).
    pub fn publish<T: Payload>(
        &self,
        query: Query<T>,
        value: &T,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let raw = self.raw().clone();
        let step = raw.next_step();
        let encoded = encode_step(&raw, step, value);
        async move {
            match encoded {
                Ok(value) => raw.publish(step, query.name, value).await,
                Err(err) => raw.abort(err).await,
            }
        }
    }
}

impl Runtime {
    /// Sends `signal` with `body` to instance `id` under dedupe `key`: however often it
    /// is sent (a retried request, a redelivered message), it is recorded once while
    /// the instance's current run holds it. `Sent::recorded` says whether this call
    /// recorded it.
    ///
    /// # Errors
    /// [`Error::KeyReused`] if `key` was sent with another name or body (nothing
    /// written), [`Error::InvalidArgument`] for a bad key, and as [`Runtime::signal`].
    ///
    /// # Durability
    /// On return the signal is on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the signal is still recorded (unless refused, and
    /// at most once per key) and reaches the run; dropped before it was polled, nothing
    /// was sent. Sending it again with the same key records it at most once either way.
    pub async fn send_once<T: Payload>(
        &self,
        id: &str,
        signal: Signal<T>,
        body: &T,
        key: &str,
    ) -> Result<Sent, Error> {
        let payload = self.encode_message(id, signal.name(), body)?;
        self.engine()
            .signal_once(id, signal.name(), payload, key)
            .await
    }

    /// Sends `update` with `input` to instance `id` and waits for the workflow's answer
    /// (`Ok(response)`, or `Err(Rejected)`), under a fresh update id. To be able to ask
    /// again after a lost connection without applying the update twice, use
    /// [`Runtime::update_with_key`].
    ///
    /// # Errors
    /// [`Error::Unanswered`] if the instance ends without answering, and as
    /// [`Runtime::update_with_key`].
    ///
    /// # Durability
    /// The answer returned is on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the request is still recorded (unless refused), and
    /// the workflow answers it whether or not anyone waits; with a fresh update id, the
    /// answer can only be read from the history. Use [`Runtime::update_with_key`] to ask
    /// again.
    pub async fn update<I: Payload, O: Payload>(
        &self,
        id: &str,
        update: Update<I, O>,
        input: &I,
    ) -> Result<Result<O, Rejected>, Error> {
        let key = uuid::Uuid::new_v4().to_string();
        self.update_with_key(id, update, input, &key).await
    }

    /// As [`Runtime::update`], with the update id `key` chosen by the caller: the request
    /// is recorded once per key, and asking again waits for (or returns) the same answer.
    ///
    /// # Errors
    /// [`Error::Unanswered`], [`Error::KeyReused`], [`Error::PayloadDecode`] if the
    /// recorded answer does not decode as `O`, and as [`Runtime::signal`].
    ///
    /// # Durability
    /// The request is on disk before the wait begins; the answer returned is on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the request is still recorded (unless refused, and
    /// at most once per key), and the workflow answers it whether or not anyone waits;
    /// ask again with the same key for its answer.
    pub async fn update_with_key<I: Payload, O: Payload>(
        &self,
        id: &str,
        update: Update<I, O>,
        input: &I,
        key: &str,
    ) -> Result<Result<O, Rejected>, Error> {
        let payload = self.encode_message(id, update.name(), input)?;
        let answer = self
            .engine()
            .update(id, update.name(), payload, key)
            .await?;
        self.decode_answer(id, update, key, answer)
    }

    fn decode_answer<I: Payload, O: Payload>(
        &self,
        id: &str,
        update: Update<I, O>,
        key: &str,
        answer: Result<cairn_runtime::codec::Payload, String>,
    ) -> Result<Result<O, Rejected>, Error> {
        match answer {
            Ok(answer) => decode::<O>(self.engine().codec(), &answer)
                .map(Ok)
                .map_err(|err| Error::PayloadDecode {
                    instance: id.to_owned(),
                    position: format!("the answer to update `{}` ({key})", update.name()),
                    type_name: std::any::type_name::<O>(),
                    message: err.to_string(),
                }),
            Err(reason) => Ok(Err(Rejected(reason))),
        }
    }

    fn decode_query<T: Payload>(
        &self,
        id: &str,
        query: Query<T>,
        value: Option<cairn_runtime::codec::Payload>,
    ) -> Result<Option<T>, Error> {
        let Some(value) = value else {
            return Ok(None);
        };
        decode::<T>(self.engine().codec(), &value)
            .map(Some)
            .map_err(|err| Error::PayloadDecode {
                instance: id.to_owned(),
                position: format!("query `{}`", query.name()),
                type_name: std::any::type_name::<T>(),
                message: err.to_string(),
            })
    }

    /// The latest value instance `id` published under `query`, read from its history
    /// without running it; `None` if its current run published none yet.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::PayloadDecode`] if the value does not decode
    /// as `T`, storage and corruption errors.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn query<T: Payload>(&self, id: &str, query: Query<T>) -> Result<Option<T>, Error> {
        let value = self.engine().query(id, query.name()).await?;
        self.decode_query(id, query, value)
    }

    fn encode_message<T: Payload>(
        &self,
        id: &str,
        name: &str,
        body: &T,
    ) -> Result<cairn_runtime::codec::Payload, Error> {
        encode(self.engine().codec(), body).map_err(|err| Error::PayloadEncode {
            instance: id.to_owned(),
            position: format!("message `{name}`"),
            message: err.to_string(),
        })
    }
}

impl Acting<'_> {
    /// Sends `signal` under dedupe `key`, recorded with the actor (see
    /// [`Runtime::send_once`]).
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::send_once`].
    ///
    /// # Cancel safety
    /// As [`Runtime::send_once`].
    pub async fn send_once<T: Payload>(
        &self,
        id: &str,
        signal: Signal<T>,
        body: &T,
        key: &str,
    ) -> Result<Sent, Error> {
        let rt = self.runtime();
        let payload = rt.encode_message(id, signal.name(), body)?;
        rt.engine()
            .signal_once_as(self.actor(), id, signal.name(), payload, key)
            .await
    }

    /// Sends `update` as request `key` and waits for its answer, recorded with the actor
    /// (see [`Runtime::update_with_key`]).
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::update_with_key`].
    ///
    /// # Cancel safety
    /// As [`Runtime::update_with_key`].
    pub async fn update_with_key<I: Payload, O: Payload>(
        &self,
        id: &str,
        update: Update<I, O>,
        input: &I,
        key: &str,
    ) -> Result<Result<O, Rejected>, Error> {
        let rt = self.runtime();
        let payload = rt.encode_message(id, update.name(), input)?;
        let answer = rt
            .engine()
            .update_as(self.actor(), id, update.name(), payload, key)
            .await?;
        rt.decode_answer(id, update, key, answer)
    }

    /// The latest value instance `id` published under `query`, if the actor may read
    /// the instance (see [`Runtime::query`]).
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Runtime::query`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn query<T: Payload>(&self, id: &str, query: Query<T>) -> Result<Option<T>, Error> {
        let rt = self.runtime();
        let value = rt.engine().query_as(self.actor(), id, query.name()).await?;
        rt.decode_query(id, query, value)
    }
}

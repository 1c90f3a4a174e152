//! Inbound from the gateway: events forwarded to the ingest, and interactions (slash
//! commands, button clicks) answered only once what they caused is committed.

use super::*;

/// What the gateway hands over, as the inbound loop takes it. `Instant`s are when an
/// interaction arrived (its answer is due within 3 s of that).
pub(super) enum Inbound {
    Ready { session: String },
    Message(Box<Message>),
    Command(Box<CommandInteraction>, Instant),
    Component(Box<ComponentInteraction>, Instant),
}

impl Inbound {
    pub(super) fn id(&self) -> u64 {
        match self {
            Inbound::Ready { .. } => 0,
            Inbound::Message(m) => m.id.get(),
            Inbound::Command(c, _) => c.id.get(),
            Inbound::Component(c, _) => c.id.get(),
        }
    }
}

/// serenity's event handler: forwards to the inbound loop and does nothing else.
pub(super) struct Forward(pub(super) mpsc::UnboundedSender<Inbound>);

#[async_trait]
impl EventHandler for Forward {
    async fn ready(&self, _: Context, ready: Ready) {
        let _ = self.0.send(Inbound::Ready { session: ready.session_id });
    }

    async fn message(&self, _: Context, message: Message) {
        let _ = self.0.send(Inbound::Message(Box::new(message)));
    }

    async fn interaction_create(&self, _: Context, interaction: Interaction) {
        let at = Instant::now();
        let _ = match interaction {
            Interaction::Command(c) => self.0.send(Inbound::Command(Box::new(c), at)),
            Interaction::Component(c) => self.0.send(Inbound::Component(Box::new(c), at)),
            _ => Ok(()),
        };
    }
}

pub(super) type Committing = Pin<Box<dyn Future<Output = Result<(), SubmitError>> + Send>>;

/// Queues an event on the ingest and returns the wait for its commit. The first poll puts the
/// event on the queue (or in line for a place on it, which tokio keeps in order), so events
/// are queued in the order they are handed in here.
pub(super) async fn hand_in(ctx: &ChatContext, event: InboundEvent) -> Committing {
    let ctx = ctx.clone();
    let mut committing: Committing = Box::pin(async move { ctx.submit(event).await });
    match std::future::poll_fn(|cx| Poll::Ready(committing.as_mut().poll(cx))).await {
        Poll::Ready(result) => Box::pin(std::future::ready(result)),
        Poll::Pending => committing,
    }
}

/// The commit, if it comes before the interaction's answer is due; else the wait, still going.
pub(super) async fn commit_within(
    mut committing: Committing,
    arrived: Instant,
) -> Result<Result<(), SubmitError>, Committing> {
    let due = tokio::time::Instant::from_std(arrived + ANSWER_WITHIN);
    match tokio::time::timeout_at(due, &mut committing).await {
        Ok(result) => Ok(result),
        Err(_) => Err(committing),
    }
}

pub(super) fn not_taken(e: &SubmitError) -> String {
    let what = match e {
        SubmitError::ShuttingDown => "Wavelet is restarting",
        SubmitError::Refused(_) => "Wavelet could not record it",
    };
    format!("That was not taken: {what}. Please try again in a moment.")
}

pub(super) fn ephemeral(text: String) -> CreateInteractionResponseMessage {
    CreateInteractionResponseMessage::new().content(text).ephemeral(true).allowed_mentions(CreateAllowedMentions::new())
}

/// A slash command: answered (only to the person) once its event is committed; deferred
/// first when the commit takes longer than Discord waits.
pub(super) async fn answer_command(
    http: Arc<Http>,
    c: Box<CommandInteraction>,
    committing: Committing,
    arrived: Instant,
) {
    let text = |result: &Result<(), SubmitError>| match result {
        Ok(()) => format!("Received `/{}`.", c.data.name),
        Err(e) => not_taken(e),
    };
    let outcome = match commit_within(committing, arrived).await {
        Ok(result) => {
            if let Err(e) = &result {
                tracing::error!(interaction = c.id.get(), error = %e, "discord command not taken");
            }
            c.create_response(&*http, CreateInteractionResponse::Message(ephemeral(text(&result)))).await
        }
        Err(committing) => {
            if let Err(e) = c.defer_ephemeral(&*http).await {
                tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord command not deferred");
            }
            let result = committing.await;
            c.edit_response(&*http, EditInteractionResponse::new().content(text(&result))).await.map(|_| ())
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord command not answered");
    }
}

/// A button click: acknowledged once its event is committed. An answered choice's buttons are
/// taken off its question, so a stray click later cannot answer another question; an
/// Acknowledge button stays for the others notified. A click that was not taken gets an
/// ephemeral error.
pub(super) async fn answer_click(
    http: Arc<Http>,
    c: Box<ComponentInteraction>,
    click: Click,
    committing: Committing,
    arrived: Instant,
) {
    let settle = |click: &Click| match click {
        Click::Choose { .. } => {
            CreateInteractionResponse::UpdateMessage(CreateInteractionResponseMessage::new().components(Vec::new()))
        }
        Click::Ack(_) => CreateInteractionResponse::Acknowledge,
    };
    let outcome = match commit_within(committing, arrived).await {
        Ok(Ok(())) => c.create_response(&*http, settle(&click)).await,
        Ok(Err(e)) => {
            tracing::error!(interaction = c.id.get(), error = %e, "discord click not taken");
            c.create_response(&*http, CreateInteractionResponse::Message(ephemeral(not_taken(&e)))).await
        }
        Err(committing) => {
            if let Err(e) = c.defer(&*http).await {
                tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord click not deferred");
            }
            match committing.await {
                Ok(()) if matches!(click, Click::Choose { .. }) => {
                    c.edit_response(&*http, EditInteractionResponse::new().components(Vec::new())).await.map(|_| ())
                }
                Ok(()) => Ok(()),
                Err(e) => {
                    let followup = CreateInteractionResponseFollowup::new()
                        .content(not_taken(&e))
                        .ephemeral(true)
                        .allowed_mentions(CreateAllowedMentions::new());
                    c.create_followup(&*http, followup).await.map(|_| ())
                }
            }
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord click not answered");
    }
}

/// An interaction somewhere Wavelet does not serve (a guild channel no group owns) or on a
/// button that is not Wavelet's: said so, only to the person.
pub(super) async fn respond_not_served(http: Arc<Http>, interaction: Interaction) {
    let text = match &interaction {
        Interaction::Component(c) if Click::parse(&c.data.custom_id).is_none() => "This button is not Wavelet's.",
        _ => "Wavelet does not work in this channel. Use your group's channel, or a direct message with me.",
    };
    let response = CreateInteractionResponse::Message(ephemeral(text.into()));
    let outcome = match &interaction {
        Interaction::Command(c) => c.create_response(&*http, response).await,
        Interaction::Component(c) => c.create_response(&*http, response).await,
        _ => Ok(()),
    };
    if let Err(e) = outcome {
        tracing::warn!(interaction = interaction.id().get(), error = %describe(&e), "discord interaction not answered");
    }
}

/// What a click on one of Wavelet's buttons means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Click {
    /// An escalation notice's Acknowledge button: `ack C-12`.
    Ack(String),
    /// An option of a `choose` question: the question's [`message_tag`] (none on buttons
    /// from before tags), the option's 1-based number, and its label when the custom id could
    /// carry it.
    Choose { question: Option<String>, number: usize, label: Option<String> },
}

impl Click {
    pub(super) fn parse(custom_id: &str) -> Option<Click> {
        if let Some(case) = custom_id.strip_prefix(ACK_BUTTON) {
            let digits = case.strip_prefix("C-")?;
            return (!digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Click::Ack(case.to_string()));
        }
        let rest = custom_id.strip_prefix(CHOOSE_BUTTON)?;
        let (question, rest) = match rest.split_once(':') {
            Some((tag, rest)) if tag.len() == TAG_CHARS && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (Some(tag.to_string()), rest)
            }
            _ => (None, rest),
        };
        let (number, label) = match rest.split_once(':') {
            Some((n, label)) => (n, Some(label.to_string())),
            None => (rest, None),
        };
        Some(Click::Choose { question, number: number.parse().ok().filter(|&n| n > 0)?, label })
    }

    /// The tag of the question a choice was on.
    pub(super) fn question(&self) -> Option<&str> {
        match self {
            Click::Choose { question, .. } => question.as_deref(),
            Click::Ack(_) => None,
        }
    }

    /// The text the click stands for: what the person would have typed.
    pub(super) fn text(&self) -> String {
        match self {
            Click::Ack(case) => format!("ack {case}"),
            Click::Choose { label: Some(label), .. } => label.clone(),
            Click::Choose { number, label: None, .. } => number.to_string(),
        }
    }

    pub(super) fn custom_id(&self) -> String {
        match self {
            Click::Ack(case) => format!("{ACK_BUTTON}{case}"),
            Click::Choose { question, number, label } => {
                let short = match question {
                    Some(tag) => format!("{CHOOSE_BUTTON}{tag}:{number}"),
                    None => format!("{CHOOSE_BUTTON}{number}"),
                };
                match label {
                    Some(label) => {
                        let long = format!("{short}:{label}");
                        if long.chars().count() <= MAX_CUSTOM_ID_CHARS { long } else { short }
                    }
                    None => short,
                }
            }
        }
    }
}

//! Editing what a container runs and its rules, one item per line (`rules_text`): plain
//! forms that work without JavaScript, and reload the container when saved.

use leptos::prelude::*;

use super::widgets::ErrorBox;
use crate::model::{ApiError, ContainerCommand, FirewallRule, NetworkRule};
use crate::rules_text::{firewall_text, network_text};
use crate::server_fns::{SetCommand, SetFirewallRules, SetNetworkRules};

/// The forms of a container page; each one saved reloads the container.
#[derive(Clone, Copy)]
pub struct Edits {
    pub command: ServerAction<SetCommand>,
    pub firewall: ServerAction<SetFirewallRules>,
    pub network: ServerAction<SetNetworkRules>,
}

impl Edits {
    pub fn new() -> Edits {
        Edits {
            command: ServerAction::new(),
            firewall: ServerAction::new(),
            network: ServerAction::new(),
        }
    }

    /// Changes whenever one of them is done.
    pub fn version(&self) -> usize {
        self.command.version().get() + self.firewall.version().get() + self.network.version().get()
    }
}

/// The error the last save answered with, if it did.
fn refused(error: impl Fn() -> Option<ApiError> + Send + Sync + 'static) -> impl IntoView {
    move || error().map(|error| view! { <ErrorBox error/> })
}

#[component]
pub fn CommandEditor(
    id: String,
    command: ContainerCommand,
    action: ServerAction<SetCommand>,
) -> impl IntoView {
    view! {
        <details class="editor">
            <summary>"Edit the command"</summary>
            <ActionForm action=action attr:class="stacked-form">
                <input type="hidden" name="id" value=id/>
                <label for="command-args">"Arguments, one per line (the first is the program)"</label>
                <textarea id="command-args" name="args" rows="4">{command.args.join("\n")}</textarea>
                <label for="command-env">"Environment, NAME=value per line"</label>
                <textarea id="command-env" name="env" rows="2">{command.env.join("\n")}</textarea>
                <label for="command-cwd">"Working directory"</label>
                <input id="command-cwd" name="cwd" value=command.cwd/>
                <p class="muted">"Takes effect at the next start."</p>
                <button type="submit" disabled=move || action.pending().get()>"Save the command"</button>
            </ActionForm>
            {refused(move || action.value().get().and_then(|r| r.flatten().err()))}
        </details>
    }
}

#[component]
pub fn FirewallEditor(
    id: String,
    rules: Vec<FirewallRule>,
    action: ServerAction<SetFirewallRules>,
) -> impl IntoView {
    view! {
        <details class="editor">
            <summary>"Edit the firewall rules"</summary>
            <ActionForm action=action attr:class="stacked-form">
                <input type="hidden" name="id" value=id/>
                <label for="firewall-rules">
                    "One rule per line: direction protocol port cidr action, e.g. "
                    <code>"ingress tcp 80 10.0.0.0/8 allow"</code>
                    " (port all for every port). The first rule that matches decides; what none matches is allowed."
                </label>
                <textarea id="firewall-rules" name="rules" rows="5">{firewall_text(&rules)}</textarea>
                <p class="muted">"In force at once while it runs."</p>
                <button type="submit" disabled=move || action.pending().get()>"Save the firewall rules"</button>
            </ActionForm>
            {refused(move || action.value().get().and_then(|r| r.flatten().err()))}
        </details>
    }
}

#[component]
pub fn NetworkEditor(
    id: String,
    rules: Vec<NetworkRule>,
    action: ServerAction<SetNetworkRules>,
) -> impl IntoView {
    view! {
        <details class="editor">
            <summary>"Edit the network rules"</summary>
            <ActionForm action=action attr:class="stacked-form">
                <input type="hidden" name="id" value=id/>
                <label for="network-rules">
                    "One interface per line: interface network [address|auto] [mtu], e.g. "
                    <code>"eth0 default auto"</code>
                    ". None: eth0 on the server's default network."
                </label>
                <textarea id="network-rules" name="rules" rows="3">{network_text(&rules)}</textarea>
                <p class="muted">"Takes effect at the next start."</p>
                <button type="submit" disabled=move || action.pending().get()>"Save the network rules"</button>
            </ActionForm>
            {refused(move || action.value().get().and_then(|r| r.flatten().err()))}
        </details>
    }
}

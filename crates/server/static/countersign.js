// countersign's only script: passkey sign-in, enrolment and votes, and
// the live view of a proposal. It writes page text only through
// textContent, never as HTML, so nothing the server relays from a
// repository can become markup or script.
"use strict";

(function () {
  function encode(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (const byte of bytes) {
      text += String.fromCharCode(byte);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decode(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "===".slice((base64.length + 3) % 4);
    const binary = atob(padded);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  // Sends JSON and returns the parsed answer; throws the server's
  // error sentence on failure.
  async function send(method, url, body) {
    const options = { method: method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (!response.ok) {
      const message = answer && answer.error ? answer.error : response.status + " " + response.statusText;
      throw new Error(message);
    }
    return answer;
  }

  function say(element, text, failed) {
    if (!element) {
      return;
    }
    element.textContent = text;
    element.classList.toggle("failed", Boolean(failed));
  }

  function assertionBody(credential) {
    const response = credential.response;
    return {
      credential_id: encode(credential.rawId),
      authenticator_data: encode(response.authenticatorData),
      client_data_json: encode(response.clientDataJSON),
      signature: encode(response.signature),
    };
  }

  function describe(error) {
    if (error && error.name === "NotAllowedError") {
      return "The passkey prompt was cancelled or timed out.";
    }
    return error && error.message ? error.message : String(error);
  }

  // Sign-in with a discoverable passkey: the server finds the approver
  // by the credential the authenticator picks.
  function setUpSignIn() {
    const section = document.getElementById("sign-in");
    const button = document.getElementById("sign-in-button");
    if (!section || !button) {
      return;
    }
    const status = document.getElementById("sign-in-status");
    button.addEventListener("click", async function () {
      button.disabled = true;
      say(status, "Waiting for your passkey…");
      try {
        const options = await send("POST", "/sign-in/challenge", {});
        const credential = await navigator.credentials.get({
          publicKey: {
            challenge: decode(options.challenge),
            rpId: options.rp_id,
            allowCredentials: [],
            userVerification: "preferred",
            timeout: options.timeout_ms,
          },
        });
        const body = assertionBody(credential);
        body.challenge = options.challenge;
        const answer = await send("POST", "/sign-in", body);
        say(status, "Signed in as " + answer.approver + ".");
        window.location.assign(section.dataset.next || "/proposals");
      } catch (error) {
        say(status, describe(error), true);
        button.disabled = false;
      }
    });
  }

  function setUpEnrolment() {
    const button = document.getElementById("enrol-button");
    if (!button) {
      return;
    }
    const status = document.getElementById("enrol-status");
    const nameInput = document.getElementById("enrol-name");
    button.addEventListener("click", async function () {
      button.disabled = true;
      say(status, "Waiting for your device…");
      try {
        const options = await send("POST", "/enrol/challenge", { name: nameInput.value.trim() });
        const credential = await navigator.credentials.create({
          publicKey: {
            challenge: decode(options.challenge),
            rp: { id: options.rp_id, name: options.rp_name },
            user: {
              id: decode(options.user_id),
              name: options.user_name,
              displayName: options.display_name,
            },
            pubKeyCredParams: options.algorithms.map(function (alg) {
              return { type: "public-key", alg: alg };
            }),
            authenticatorSelection: { residentKey: "required", userVerification: "preferred" },
            attestation: "none",
            timeout: options.timeout_ms,
          },
        });
        const answer = await send("POST", "/enrol", {
          challenge: options.challenge,
          attestation_object: encode(credential.response.attestationObject),
          client_data_json: encode(credential.response.clientDataJSON),
        });
        document.getElementById("enrol-snippet").textContent = answer.snippet;
        document.getElementById("enrol-result").hidden = false;
        say(status, "Passkey made. " + answer.note + " It counts once the policy lists it.");
      } catch (error) {
        say(status, describe(error), true);
      }
      button.disabled = false;
    });
  }

  // Approve or reject: the challenge is derived by the server from the
  // exact statement bytes and the verdict, and the signed assertion
  // goes to the same API as `countersign approve`.
  function setUpVotes() {
    const box = document.getElementById("vote");
    if (!box) {
      return;
    }
    const number = box.dataset.proposal;
    const status = document.getElementById("vote-status");
    const buttons = box.querySelectorAll("button[data-verdict]");
    for (const button of buttons) {
      button.addEventListener("click", async function () {
        const verdict = button.dataset.verdict;
        for (const other of buttons) {
          other.disabled = true;
        }
        say(status, "Waiting for your passkey…");
        try {
          const options = await send("GET", "/proposals/" + number + "/passkey?verdict=" + verdict);
          const credential = await navigator.credentials.get({
            publicKey: {
              challenge: decode(options.challenge),
              rpId: options.rp_id,
              allowCredentials: [{ type: "public-key", id: decode(options.credential_id) }],
              userVerification: options.user_verification,
              timeout: 120000,
            },
          });
          const signature = assertionBody(credential);
          signature.kind = "webauthn";
          const body = { signature: signature };
          let path = "/approvals";
          if (verdict === "reject") {
            path = "/rejections";
            const reason = document.getElementById("reason").value.trim();
            if (reason) {
              body.reason = reason;
            }
          }
          await send("POST", "/api/v1/proposals/" + number + path, body);
          say(status, verdict === "approve" ? "Your approval was accepted." : "Your rejection was accepted.");
        } catch (error) {
          say(status, describe(error), true);
          for (const other of buttons) {
            other.disabled = false;
          }
        }
      });
    }
  }

  function renderVotes(list, votes) {
    list.replaceChildren();
    for (const vote of votes) {
      const item = document.createElement("li");
      item.className = "vote-" + vote.verdict;
      const who = document.createElement("strong");
      who.textContent = vote.approver;
      item.append(who, " " + vote.verdict + "d ", vote.at_utc);
      if (vote.reason) {
        const quote = document.createElement("q");
        quote.textContent = vote.reason;
        item.append(": ", quote);
      }
      list.append(item);
    }
  }

  function applySummary(summary) {
    const state = document.getElementById("state");
    if (state) {
      state.textContent = summary.state;
      state.className = "state state-" + summary.state;
    }
    const quorum = document.getElementById("quorum");
    if (quorum) {
      quorum.textContent = summary.have + " of " + summary.threshold;
    }
    const missing = document.getElementById("missing");
    if (missing) {
      missing.textContent = "Still required: " + summary.missing_required;
      missing.hidden = !summary.missing_required;
    }
    const error = document.getElementById("error");
    if (error) {
      error.textContent = summary.error;
      error.hidden = !summary.error;
    }
    const votes = document.getElementById("votes");
    if (votes) {
      renderVotes(votes, summary.votes);
    }
    const box = document.getElementById("vote");
    if (box && summary.state !== "awaiting-approval") {
      for (const button of box.querySelectorAll("button")) {
        button.disabled = true;
      }
    }
    // The diffs and the buttons are rendered with the page, so that an
    // approver never votes on a build whose diffs the page did not show.
    const note = document.getElementById("vote-note");
    if (note && note.dataset.afterBuild === "true" && summary.state !== "building") {
      note.textContent =
        summary.state === "awaiting-approval"
          ? "The build finished. Reload the page to review the diffs and vote."
          : "The proposal is " + summary.state + " and takes no votes.";
    }
  }

  function setUpLiveView() {
    const section = document.getElementById("proposal");
    if (!section || section.dataset.live !== "true" || !window.EventSource) {
      return;
    }
    const url =
      "/proposals/" + section.dataset.number + "/events?log=" + section.dataset.logOffset +
      "&activation=" + section.dataset.activationAfter;
    const source = new EventSource(url);
    const log = document.getElementById("log");
    const logSize = document.getElementById("log-size");
    const activation = document.getElementById("activation");
    source.addEventListener("log", function (event) {
      log.append(event.data + "\n");
      if (logSize) {
        const lines = log.textContent.split("\n").length - 1;
        logSize.textContent = lines + (lines === 1 ? " line" : " lines");
      }
    });
    source.addEventListener("activation", function (event) {
      const line = JSON.parse(event.data);
      const item = document.createElement("li");
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = line.at_utc;
      item.append(when, " " + line.text);
      activation.append(item);
    });
    source.addEventListener("summary", function (event) {
      applySummary(JSON.parse(event.data));
    });
    source.addEventListener("end", function (event) {
      if (event.data !== "reconnect") {
        source.close();
      }
    });
  }

  setUpSignIn();
  setUpEnrolment();
  setUpVotes();
  setUpLiveView();
})();

"""How a model's answers are scored, for training and evaluation alike: logits at the
answer positions from one teacher-forced pass (each answer token predicted from the true
tokens before it), then per-token negative log-likelihood (natural log) and greedy
predictions. A sample counts as right when every answer token is the argmax: under
teacher forcing that is exactly when greedy decoding would produce the whole answer (the
first wrong token is the first place the two differ)."""
import torch


def answer_logits(model, tokens, answer_positions, position_ids=None):
    """float32 [batch][answers][vocab]: the logits predicting tokens[b, p] for each p of
    answer_positions int64 [batch][answers] (p >= 1; positions that are masked out may be 0).
    tokens int64 [batch][length]. Only the rows needed go through the LM head."""
    hidden = model.model(input_ids=tokens, position_ids=position_ids, use_cache=False).last_hidden_state
    rows = (answer_positions - 1).clamp(min=0)
    picked = torch.gather(hidden, 1, rows[..., None].expand(-1, -1, hidden.shape[-1]))
    return model.lm_head(picked).float()


def score(logits, targets):
    """(greedy int64, nll float32), both [..., answers], from logits [..., answers, vocab]
    and targets int64 [..., answers]."""
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    return logits.argmax(-1), nll


@torch.no_grad()
def own_attention_scores(model, samples, batch=8):
    """The model's own attention on evaluation samples (retrieval_task.Task.eval_samples,
    all of one length): logits float32 [n][value_len][vocab] from one pass over prompt +
    answer[:-1], in batches."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        full = torch.stack([torch.cat([torch.as_tensor(s["prompt"]), torch.as_tensor(s["answer"])]) for s in chunk])
        cut = len(chunk[0]["prompt"])
        positions = torch.arange(cut, full.shape[1]).expand(len(chunk), -1)
        out.append(answer_logits(model, full[:, :-1].to(device), positions.to(device)))
    return torch.cat(out)

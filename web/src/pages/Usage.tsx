import { api, type Page } from "../api";
import { type Bar, BarChart } from "../components/BarChart";
import { ErrorBox, useLoad } from "../components/ui";
import { dateTime } from "../format";

interface Balance {
  tier: string;
  balance: string;
  overdraft: string;
  available: string;
  owed: string;
  currency_per_credit: string;
}

interface Summary {
  period_start: string;
  period_end: string;
  total_credits: string;
  rows: { key: Record<string, string | null>; quantity: string; credits: string; events: number }[];
}

interface LedgerEntry {
  id: string;
  entry_type: string;
  amount: string;
  description: string | null;
  created_at: string;
}

interface Invoice {
  id: string;
  period_start: string;
  period_end: string;
  status: string;
  currency: string;
  amount_cents: number;
  total_credits: string;
  hosted_invoice_url: string | null;
}

/** Cents as an exact decimal string ("12.05"): integer digits only, no float division. */
function cents(amount: number): string {
  const sign = amount < 0 ? "-" : "";
  const digits = String(Math.abs(Math.trunc(amount))).padStart(3, "0");
  return `${sign}${digits.slice(0, -2)}.${digits.slice(-2)}`;
}

export function Usage() {
  const [balance, balanceError] = useLoad(() => api<Balance>("/billing/balance"));
  const [summary, summaryError] = useLoad(() => api<Summary>("/usage", { query: { group_by: "day,component" } }));
  const [ledger] = useLoad(() => api<Page<LedgerEntry>>("/billing/ledger", { query: { limit: 50 } }));
  const [invoices] = useLoad(() => api<Page<Invoice>>("/billing/invoices"));

  const byDay = new Map<string, Bar>();
  for (const row of summary?.rows ?? []) {
    const day = row.key.day ?? "?";
    const bar = byDay.get(day) ?? { label: day, parts: [] };
    bar.parts.push({ key: row.key.component ?? "other", value: row.credits });
    byDay.set(day, bar);
  }
  const bars = Array.from(byDay.values()).sort((a, b) => a.label.localeCompare(b.label));

  return (
    <section>
      <header class="page-head">
        <h1>Usage and billing</h1>
      </header>
      <ErrorBox error={balanceError || summaryError} />
      {balance && (
        <div class="cards" data-testid="balance">
          <div class="card">
            <div class="muted small">Balance (credits)</div>
            <div class="big">{balance.balance}</div>
          </div>
          <div class="card">
            <div class="muted small">Available incl. overdraft</div>
            <div class="big">{balance.available}</div>
          </div>
          <div class="card">
            <div class="muted small">Plan</div>
            <div class="big">{balance.tier}</div>
          </div>
          <div class="card">
            <div class="muted small">USD per credit</div>
            <div class="big">{balance.currency_per_credit}</div>
          </div>
        </div>
      )}
      <h2>Usage this month by day and component (credits)</h2>
      {summary && (
        <>
          <BarChart bars={bars} unit="credits" />
          <p class="muted small">
            Total {summary.total_credits} credits, {dateTime(summary.period_start)} – {dateTime(summary.period_end)}
          </p>
        </>
      )}
      <h2>Ledger</h2>
      <table class="list" data-testid="ledger">
        <thead>
          <tr>
            <th>When</th>
            <th>Type</th>
            <th>Credits</th>
            <th>Description</th>
          </tr>
        </thead>
        <tbody>
          {ledger?.data.map((entry) => (
            <tr key={entry.id}>
              <td>{dateTime(entry.created_at)}</td>
              <td>{entry.entry_type}</td>
              <td class="num">{entry.amount}</td>
              <td>{entry.description}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h2>Invoices</h2>
      <table class="list" data-testid="invoices">
        <thead>
          <tr>
            <th>Period</th>
            <th>Status</th>
            <th>Credits</th>
            <th>Amount</th>
          </tr>
        </thead>
        <tbody>
          {invoices?.data.map((invoice) => (
            <tr key={invoice.id}>
              <td>
                {dateTime(invoice.period_start)} – {dateTime(invoice.period_end)}
              </td>
              <td>{invoice.status}</td>
              <td class="num">{invoice.total_credits}</td>
              <td class="num">
                {invoice.hosted_invoice_url ? (
                  <a href={invoice.hosted_invoice_url} target="_blank" rel="noreferrer">
                    {cents(invoice.amount_cents)} {invoice.currency.toUpperCase()}
                  </a>
                ) : (
                  `${cents(invoice.amount_cents)} ${invoice.currency.toUpperCase()}`
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {invoices && !invoices.data.length && <p class="muted">No invoices yet.</p>}
    </section>
  );
}

import { test, expect, Page } from '@playwright/test';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

const password = process.env.DOPPEL_PASSWORD ?? '';

/** Collects every error and warning the page logs; the console must stay clean. */
function watchConsole(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') {
      problems.push(`${msg.type()}: ${msg.text()}`);
    }
  });
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  return problems;
}

async function logIn(page: Page, user: string) {
  await page.getByLabel('User name').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
}

/** Sets (or, with '', lifts) a server's bandwidth limit on the Servers page. */
async function setLimit(page: Page, server: string, limit: string, shown: string) {
  await page.goto('/servers');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await page.locator('#limit-server').selectOption({ label: server });
  await page.locator('#limit-rate').fill(limit);
  await page.getByRole('button', { name: 'Set limit' }).click();
  await expect(page.locator(`tr[data-server="${server}"] td[data-label="Limit"]`)).toHaveText(shown);
}

/** Logs in as the admin and opens the web-app container; returns its root on disk. */
async function openWebAppAsAdmin(page: Page): Promise<string> {
  await page.goto('/login');
  await logIn(page, 'admin');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await page.locator('td[data-label="Name"] a').getByText('web-app', { exact: true }).click();
  await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app');
  // What the tree is, and what that makes its copies (the test's data dir has no image
  // trees: a directory, or on btrfs a subvolume).
  await expect(page.locator('dt:text-is("Tree") + dd')).toHaveText(
    /^(a directory: its copies go file by file|a btrfs subvolume: its copies on its server are snapshots)/,
  );
  return (await page.locator('dt:has-text("Root on disk") + dd').innerText()).trim();
}

test('log in, browse containers and open a container', async ({ page }) => {
  const problems = watchConsole(page);

  await page.goto('/containers');
  await expect(page).toHaveURL(/\/login\?next=/);
  await logIn(page, 'admin');
  await expect(page).toHaveURL(/\/containers$/);
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');

  await expect(page.getByRole('heading', { name: 'Containers' })).toBeVisible();
  const staging = page.locator('tr', { hasText: 'web-app-staging' });
  await expect(staging).toContainText('copy of web-app');
  await expect(staging).toContainText('local-b');
  await expect(page.locator('tbody tr')).toHaveCount(5);
  await page.screenshot({ path: 'test-results/containers-page.png', fullPage: true });

  // Filter by project, client-side after hydration.
  await page.getByLabel('Project').selectOption({ label: 'data-pipeline' });
  await page.getByRole('button', { name: 'Filter' }).click();
  await expect(page).toHaveURL(/project=/);
  await expect(page.locator('tbody tr')).toHaveCount(2);
  await expect(page.locator('tbody')).toContainText('db-primary');

  // Open a container through a client-side navigation.
  await page.getByRole('link', { name: 'db-primary' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toContainText('db-primary');
  await expect(page.getByRole('cell', { name: 'nightly' })).toBeVisible();
  await expect(page.getByRole('cell', { name: 'data-backend' })).toBeVisible();

  // And a copy, loaded directly (server-rendered, then hydrated).
  await page.goto('/containers');
  await page.getByRole('link', { name: 'web-app-staging' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app-staging');
  await expect(page.getByText('Copy of')).toBeVisible();
  await page.getByRole('link', { name: 'web-app', exact: true }).click();
  await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app');
  await expect(page.getByRole('cell', { name: '80', exact: true })).toBeVisible();
  await expect(page.getByRole('cell', { name: 'before-upgrade' })).toBeVisible();

  await page.screenshot({ path: 'test-results/container-page.png', fullPage: true });

  // On a phone, no page scrolls sideways: the navigation wraps in a row of its own.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const path of ['/containers', '/sync-status', '/jobs', '/admin']) {
    await page.goto(path);
    await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    expect(width, path).toBeLessThanOrEqual(390);
  }
  expect(problems).toEqual([]);
});

test('a project member sees only their projects, and a wrong password is refused', async ({ page }) => {
  const problems = watchConsole(page);
  await page.goto('/login');
  await page.getByLabel('User name').fill('alice');
  await page.getByLabel('Password').fill('not her password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('alert')).toContainText('Wrong user name or password');

  await logIn(page, 'alice');
  await expect(page).toHaveURL(/\/containers$/);
  await expect(page.locator('tbody tr')).toHaveCount(3);
  await expect(page.locator('tbody')).not.toContainText('db-primary');
  await expect(page.locator('.user-name')).toHaveText('alice');

  await page.getByRole('button', { name: 'Log out' }).click();
  await expect(page).toHaveURL(/\/login/);
  await page.goto('/containers');
  await expect(page).toHaveURL(/\/login/);
  expect(problems).toEqual([]);
});

test('copy a container through the dialog, then change the source and sync, live', async ({ page }) => {
  const problems = watchConsole(page);
  const rootPath = await openWebAppAsAdmin(page);

  // A directory tree offers to become an image tree; this doppel runs without
  // --image-trees, and the refusal says so beside the button. (On btrfs the tree is a
  // subvolume, with no such button.)
  const tree = page.locator('dt:text-is("Tree") + dd');
  const convert = tree.getByRole('button', { name: 'Make it an image tree' });
  if ((await tree.innerText()).startsWith('a directory')) {
    await convert.click();
    await expect(tree.locator('.error-box')).toContainText('doppel runs without --image-trees');
  } else {
    await expect(convert).toHaveCount(0);
  }

  await page.getByRole('button', { name: 'Copy container' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toBeVisible();
  await expect(dialog.getByLabel('Name')).toHaveAttribute('placeholder', 'web-app-copy');
  // The placeholder is only the first choice: the label says what an empty name gets when it is taken.
  await expect(dialog.locator('label[for="copy-name"]')).toContainText('or web-app-copy-2, -3, … if taken');
  await expect(dialog.getByLabel('Target server')).toContainText("(the source's server)");

  // The name is checked as it is typed.
  await dialog.getByLabel('Name').fill('Bad Name');
  await expect(dialog.locator('#copy-name-error')).toContainText('letters, digits and hyphens');
  // The server's answers land next to their field.
  await dialog.getByLabel('Name').fill('web-app-e2e');
  await dialog.getByLabel(/SSH public key/).fill('ssh-ed25519 nonsense');
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  // Named as the form labels it, and read with its field by screen readers.
  await expect(dialog.getByText(/SSH public key: /)).toBeVisible();
  await expect(dialog.getByLabel(/SSH public key/)).toHaveAccessibleDescription(/SSH public key: /);
  await dialog.getByLabel(/SSH public key/).fill('');
  await dialog.getByLabel('Name').fill('edge-proxy');
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  await expect(dialog.getByText(/already exists in the target project/)).toBeVisible();

  // A valid copy: progress to 100 %, then the new container, running.
  await dialog.getByLabel('Name').fill('web-app-e2e');
  await dialog.getByLabel(/Copy firewall rules/).check();
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  await expect(dialog.locator('.live-job .percent')).toHaveText('100 %', { timeout: 30_000 });
  await expect(dialog.locator('.live-job h2')).toContainText('succeeded');
  // Started once: another click would make another copy.
  await expect(dialog.getByRole('button', { name: 'Copy', exact: true })).toBeDisabled();
  await page.screenshot({ path: 'test-results/copy-dialog.png' });
  await dialog.getByRole('link', { name: 'Open the container' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app-e2e');
  await expect(page.locator('h1 .badge')).toHaveText('running');
  await expect(page.getByRole('cell', { name: '80', exact: true })).toBeVisible();

  // Change the source on disk, then "Sync now" on the copy shows what changed.
  fs.writeFileSync(path.join(rootPath, 'etc', 'added-by-e2e'), 'new file\n');
  await page.getByRole('button', { name: 'Sync now' }).click();
  const job = page.locator('.live-job');
  await expect(job.locator('h2')).toContainText('succeeded', { timeout: 30_000 });
  await expect(job).toContainText('1 added, 0 changed, 0 deleted');
  await expect(job).toContainText('drift found on the copy: 0');
  await page.screenshot({ path: 'test-results/sync-now.png', fullPage: true });
  expect(problems).toEqual([]);
});

test('a copy runs: open its page, sync an edit of the source into it, stop, start and delete it', async ({ page, context }) => {
  const problems = watchConsole(page);
  const rootPath = await openWebAppAsAdmin(page);
  const badge = page.locator('h1 .badge');
  await expect(badge).toHaveText('running');
  await expect(page.locator('.process-card')).toContainText('eth0');

  // The source's own page, through doppel (sandboxed: it is the tenant's).
  const [source] = await Promise.all([
    context.waitForEvent('page'),
    page.getByRole('link', { name: 'Open', exact: true }).click(),
  ]);
  await expect(source.locator('p.host')).toContainText('web-app');
  await expect(source.locator('h1')).toHaveText('web-app');
  await source.close();

  // Copy it in the console; the copy runs.
  await page.getByRole('button', { name: 'Copy container' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByLabel('Name').fill('web-app-live');
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  await expect(dialog.locator('.live-job h2')).toContainText('succeeded', { timeout: 30_000 });
  await dialog.getByRole('link', { name: 'Open the container' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app-live');
  await expect(badge).toHaveText('running');

  // Its page: the source's content under its own host name.
  const [copy] = await Promise.all([
    context.waitForEvent('page'),
    page.getByRole('link', { name: 'Open', exact: true }).click(),
  ]);
  await expect(copy.locator('p.host')).toContainText('web-app-live');
  await expect(copy.locator('h1')).toHaveText('web-app');

  // Edit the source's page, Sync now: the copy's page changes. The badge follows the sync
  // live, with no reload: syncing, then running again. (2 MiB more at a limit of 1 MiB/s
  // on the server keep it syncing for seconds.)
  const copyPage = page.url();
  await setLimit(page, 'local-a', '1M', '1.0 MiB/s');
  await page.goto(copyPage);
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  fs.writeFileSync(path.join(rootPath, 'www', 'content.html'), '<h1>web-app, edited</h1>\n');
  fs.writeFileSync(path.join(rootPath, 'www', 'ballast.bin'), crypto.randomBytes(2 << 20));
  await page.getByRole('button', { name: 'Sync now' }).click();
  await expect(badge).toHaveText('syncing');
  await expect(page.locator('.live-job h2')).toContainText('succeeded', { timeout: 30_000 });
  await expect(badge).toHaveText('running');
  await setLimit(page, 'local-a', '', 'none');
  await page.goto(copyPage);
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await copy.reload();
  await expect(copy.locator('h1')).toHaveText('web-app, edited');
  await expect(copy.locator('p.host')).toContainText('web-app-live');

  // Stop it: nothing to open; start it again: the page is back.
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await expect(badge).toHaveText('stopped', { timeout: 20_000 });
  await expect(page.getByRole('link', { name: 'Open', exact: true })).toHaveCount(0);
  await expect(page.locator('.process-card')).toContainText('exit code 0');
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await expect(badge).toHaveText('running', { timeout: 20_000 });
  await copy.reload();
  await expect(copy.locator('h1')).toHaveText('web-app, edited');
  await page.screenshot({ path: 'test-results/running-copy.png', fullPage: true });

  // A firewall rule typed in the console is in force at once: the page no longer answers.
  await page.getByText('Edit the firewall rules').click();
  await page.locator('#firewall-rules').fill('ingress tcp 80 0.0.0.0/0 deny\n');
  await page.getByRole('button', { name: 'Save the firewall rules' }).click();
  await expect(page.getByRole('cell', { name: 'deny' })).toBeVisible();
  const blocked = await copy.request.get(copy.url(), { failOnStatusCode: false, timeout: 20_000 });
  expect(blocked.status()).toBe(502);
  await copy.close();

  // Delete it: the name typed again, the job followed live, and it is gone.
  await page.getByText('Delete this container…').click();
  await page.getByLabel('Type web-app-live to confirm').fill('web-app-live');
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  // Once its job is done, the page of a container that is gone gives way to the list.
  await expect(page).toHaveURL(/\/containers$/, { timeout: 30_000 });
  await expect(page.getByRole('heading', { name: 'Containers' })).toBeVisible();
  await expect(page.getByRole('link', { name: 'web-app-live' })).toHaveCount(0);
  expect(problems).toEqual([]);
});

test('settings: make an API token, use it, revoke it, and find it all in the audit log', async ({ page, request }) => {
  const problems = watchConsole(page);
  await page.goto('/login');
  await logIn(page, 'admin');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await page.getByRole('link', { name: 'admin', exact: true }).click();
  await expect(page.getByRole('heading', { name: 'Settings' })).toBeVisible();

  await page.getByLabel('Name').fill('e2e-token');
  await page.getByLabel('Read only').check();
  await page.getByRole('button', { name: 'Create token' }).click();
  const secret = (await page.locator('code.secret').innerText()).trim();
  expect(secret.length).toBeGreaterThan(20);
  const row = page.locator('tr', { hasText: 'e2e-token' });
  await expect(row).toContainText('read only');

  const auth = { headers: { Authorization: `Bearer ${secret}` } };
  expect((await request.get('/api/v1/projects', auth)).status()).toBe(200);
  expect((await request.post('/api/v1/projects', { ...auth, data: { name: 'nope' } })).status()).toBe(403);

  await row.getByRole('button', { name: 'Revoke e2e-token' }).click();
  await expect(page.locator('tr', { hasText: 'e2e-token' })).toHaveCount(0);
  expect((await request.get('/api/v1/projects', auth)).status()).toBe(401);

  // The audit log has both, with who did them; and the refused write of the read-only token.
  await page.getByRole('link', { name: 'Audit' }).click();
  await expect(page.getByRole('heading', { name: 'Audit log' })).toBeVisible();
  await expect(page.locator('tr', { hasText: 'token.create' }).first()).toContainText('admin');
  await expect(page.locator('tr', { hasText: 'token.revoke' }).first()).toContainText('ok');
  await expect(page.locator('tr.audit-refused', { hasText: 'project.create' }).first()).toBeVisible();
  await page.getByLabel('Action').fill('token.revoke');
  await page.getByRole('button', { name: 'Filter' }).click();
  await expect(page).toHaveURL(/action=token.revoke/);
  await expect(page.locator('tbody tr')).toHaveCount(1);
  expect(problems).toEqual([]);
});

test('an admin makes a project and a user; the user works in it; the admin sees it in the audit log', async ({ page }) => {
  const problems = watchConsole(page);
  await page.goto('/login');
  await logIn(page, 'admin');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await page.getByRole('link', { name: 'Admin', exact: true }).click();
  await expect(page.getByRole('heading', { name: 'Administration' })).toBeVisible();

  // The user form is in the Users card, which loads after the page's heading; the
  // projects card has a "Name" field of its own that is there at once.
  const users = page.locator('section.card', { has: page.getByRole('heading', { name: 'Users' }) });
  await users.getByLabel('Name', { exact: true }).fill('dana');
  await page.getByRole('button', { name: 'Create user' }).click();
  const password = (await page.locator('code.secret').innerText()).trim();
  await expect(page.getByRole('cell', { name: 'dana', exact: true })).toBeVisible();

  await page.locator('#new-project-name').fill('team-e2e');
  await page.getByRole('button', { name: 'Create project' }).click();
  await expect(page.getByRole('heading', { name: 'team-e2e' })).toBeVisible();
  const team = page.locator('.project-members', { hasText: 'team-e2e' });
  await team.getByLabel('Add to team-e2e (or change the role of)').fill('dana');
  await team.getByLabel('Role in team-e2e').selectOption('operator');
  await team.getByRole('button', { name: 'Save member' }).click();
  await expect(team).toContainText('dana: operator');

  // Projects are described, renamed and deleted here too.
  await page.getByLabel('Description of team-e2e').fill('The e2e team');
  await page.getByRole('button', { name: 'Save team-e2e' }).click();
  await page.locator('#new-project-name').fill('scratch-e2e');
  await page.getByRole('button', { name: 'Create project' }).click();
  await page.getByLabel('Name of scratch-e2e').fill('scratch-renamed');
  await page.getByRole('button', { name: 'Save scratch-e2e' }).click();
  await expect(page.getByRole('heading', { name: 'scratch-renamed' })).toBeVisible();
  await page.getByLabel('Type scratch-renamed to delete it').fill('scratch-renamed');
  await page.getByRole('button', { name: 'Delete scratch-renamed' }).click();
  await expect(page.getByRole('heading', { name: 'scratch-renamed' })).toHaveCount(0);
  await page.reload();
  await expect(page.getByLabel('Description of team-e2e')).toHaveValue('The e2e team');
  await expect(page.getByText('scratch-')).toHaveCount(0);

  // Something to work on in the new project: a copy of web-app, made by the admin.
  await page.goto('/containers');
  await page.locator('td[data-label="Name"] a').getByText('web-app', { exact: true }).click();
  await page.getByRole('button', { name: 'Copy container' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByLabel('Target project').selectOption({ label: 'team-e2e' });
  await dialog.getByLabel('Name').fill('team-app');
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  await expect(dialog.locator('.live-job h2')).toContainText('succeeded', { timeout: 30_000 });
  await page.keyboard.press('Escape');
  await page.getByRole('button', { name: 'Log out' }).click();

  // dana: only that project, and she copies in it.
  await page.goto('/login');
  await page.getByLabel('User name').fill('dana');
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await expect(page.locator('tbody tr')).toHaveCount(1);
  await expect(page.locator('tbody')).toContainText('team-e2e');
  await page.getByRole('link', { name: 'team-app' }).click();
  await page.getByRole('button', { name: 'Copy container' }).click();
  await dialog.getByLabel('Name').fill('danas-copy');
  await dialog.getByRole('button', { name: 'Copy', exact: true }).click();
  await expect(dialog.locator('.live-job h2')).toContainText('succeeded', { timeout: 30_000 });
  await page.keyboard.press('Escape');
  await page.getByRole('button', { name: 'Log out' }).click();

  // The admin sees her copy in the audit log.
  await page.goto('/login');
  await logIn(page, 'admin');
  // Servers: this host's are online; a new one waits for its host, its token shown once.
  await page.goto('/servers');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await expect(page.locator('tr[data-server="local-a"]')).toContainText('online');
  await page.locator('#new-server-name').fill('far-e2e');
  await page.getByRole('button', { name: 'Add server' }).click();
  await expect(page.locator('code.secret')).toContainText('doppel-join-1.');
  await expect(page.locator('tr[data-server="far-e2e"]')).toContainText('pending');
  await expect(page.locator('tr[data-server="far-e2e"]')).toContainText('waiting for its host to join');
  // What its filesystem does for copies is shown; a bandwidth limit is set, then lifted.
  await expect(page.locator('tr[data-server="local-a"] td[data-label="Storage"]')).toHaveText(
    /^(reflink|copy_file_range|stream)$/,
  );
  await setLimit(page, 'local-b', '50M', '50.0 MiB/s');
  await setLimit(page, 'local-b', '', 'none');
  // A server's directory trees made image trees at once: only this host's servers are
  // offered, and this doppel runs without --image-trees, which the answer says.
  await expect(page.locator('#convert-server option', { hasText: 'far-e2e' })).toHaveCount(0);
  await page.locator('#convert-server').selectOption({ label: 'local-a' });
  await page.getByRole('button', { name: 'Make its directory trees image trees' }).click();
  await expect(page.locator('section:has(#convert-server) .error-box')).toContainText(
    'doppel runs without --image-trees',
  );

  // A project that holds containers is not deleted: the reason is shown.
  await page.goto('/admin');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await page.getByLabel('Type team-e2e to delete it').fill('team-e2e');
  await page.getByRole('button', { name: 'Delete team-e2e' }).click();
  await expect(page.locator('.error-box', { hasText: 'the project holds containers' })).toBeVisible();
  await expect(page.getByRole('heading', { name: 'team-e2e' })).toBeVisible();
  // Another form used afterwards takes that error away: errors do not pile up.
  await page.getByLabel('Description of team-e2e').fill('The e2e team, again');
  await page.getByRole('button', { name: 'Save team-e2e' }).click();
  await expect(page.locator('.error-box')).toHaveCount(0);
  await page.reload();
  await expect(page.getByLabel('Description of team-e2e')).toHaveValue('The e2e team, again');
  await page.goto('/audit?actor=dana');
  await expect(page.locator('tr', { hasText: 'container.copy' }).first()).toContainText('ok');
  await expect(page.locator('tr', { hasText: 'login' }).first()).toContainText('dana');
  expect(problems).toEqual([]);
});

test('a failing sync shows as failing on the sync status page, and recovers', async ({ page }) => {
  const problems = watchConsole(page);
  const rootPath = await openWebAppAsAdmin(page);

  await page.getByRole('link', { name: 'Sync status' }).click();
  await expect(page.getByRole('heading', { name: 'Sync status' })).toBeVisible();
  const row = page.locator('tr', { hasText: 'web-app-staging' });
  await expect(row).toHaveAttribute('data-failing', 'false');

  // The source's tree disappears: the next sync fails, and the row says so, live.
  const away = `${rootPath}.away`;
  fs.renameSync(rootPath, away);
  try {
    await row.getByRole('button', { name: 'Sync now' }).click();
    await expect(row).toHaveAttribute('data-failing', 'true', { timeout: 30_000 });
    await expect(row).toContainText('failing (1 in a row)');
    await expect(row).toHaveAttribute('data-freshness', 'source missing');
    await expect(row.locator('.row-error')).not.toBeEmpty();
    await expect(row.locator('svg.history .bar.run-failed')).toHaveCount(1);
    await page.screenshot({ path: 'test-results/sync-status.png', fullPage: true });

    // Only the failing copies, through the filter (a shareable URL).
    await page.getByLabel('Show').selectOption('failing');
    await page.getByRole('button', { name: 'Apply' }).click();
    await expect(page).toHaveURL(/show=failing/);
    await expect(page.locator('tbody tr')).toHaveCount(1);
  } finally {
    fs.renameSync(away, rootPath);
  }

  // Source back: a sync of the selection brings the copy back to current.
  await row.getByRole('checkbox').check();
  await page.getByRole('button', { name: 'Sync selected (1)' }).click();
  await expect(page.locator('.bulk-outcome')).toContainText('started');
  await expect(page.locator('tbody tr')).toHaveCount(0, { timeout: 30_000 });
  await page.getByLabel('Show').selectOption('');
  await page.getByRole('button', { name: 'Apply' }).click();
  await expect(row).toHaveAttribute('data-failing', 'false');
  await expect(row).toHaveAttribute('data-freshness', 'current');

  // The jobs page lists the failed sync with its error (loaded directly: a lazily loaded
  // page's code arrives before it hydrates).
  await page.goto('/jobs');
  await expect(page.locator('body')).toHaveAttribute('data-hydrated', 'true');
  await expect(page.getByRole('heading', { name: 'Jobs' })).toBeVisible();
  await page.getByLabel('Status').selectOption('failed');
  await page.getByRole('button', { name: 'Filter' }).click();
  await expect(page).toHaveURL(/status=failed/);
  await expect(page.locator('tbody tr')).toHaveCount(1);
  await expect(page.locator('tbody tr .row-error')).not.toBeEmpty();
  await page.getByLabel('Status').selectOption('');
  await page.getByRole('button', { name: 'Filter' }).click();
  await expect(page.locator('tbody tr').first()).toContainText('succeeded');
  await page.screenshot({ path: 'test-results/jobs-page.png', fullPage: true });
  expect(problems).toEqual([]);
});

test.describe('without JavaScript', () => {
  test.use({ javaScriptEnabled: false });

  test('the copy form works as a plain form, with errors by their fields', async ({ page }) => {
    await page.goto('/login');
    await logIn(page, 'admin');
    await expect(page).toHaveURL(/\/containers$/);
    await page.locator('td[data-label="Name"] a').getByText('web-app', { exact: true }).click();
    await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app');

    // "Copy container" is a link to the form on a page of its own.
    await page.getByRole('button', { name: 'Copy container' }).click();
    await expect(page).toHaveURL(/\/containers\/[0-9a-f]{24}\/copy$/);
    await expect(page.getByLabel('Target server')).toContainText("(the source's server)");

    // A taken name: the same form again, with what was typed and the error by the field.
    await page.getByLabel('Name').fill('edge-proxy');
    await page.getByLabel(/Copy firewall rules/).check();
    await page.getByRole('button', { name: 'Copy', exact: true }).click();
    await expect(page).toHaveURL(/\/copy\?error=/);
    await expect(page.locator('.field-error', { hasText: 'already exists in the target project' })).toBeVisible();
    await expect(page.getByLabel('Name')).toHaveValue('edge-proxy');
    await expect(page.getByLabel(/Copy firewall rules/)).toBeChecked();

    // A good one: the new container's page, with its job.
    await page.getByLabel('Name').fill('web-app-nojs');
    await page.getByRole('button', { name: 'Copy', exact: true }).click();
    await expect(page).toHaveURL(/\/containers\/[0-9a-f]{24}\?job=[0-9a-f]{24}$/);
    await expect(page.getByRole('heading', { level: 1 })).toContainText('web-app-nojs');
    await expect(page.locator('.live-job')).toBeVisible();
    await page.screenshot({ path: 'test-results/copy-without-javascript.png', fullPage: true });
    // Nothing follows the job live without JavaScript: the page reloads itself until the
    // copy is done, with no reload by hand.
    await expect(page.getByRole('heading', { level: 1 }).locator('.badge')).toHaveText('running', { timeout: 30_000 });
    await expect(page.locator('.live-job h2')).toContainText('succeeded');
  });
});

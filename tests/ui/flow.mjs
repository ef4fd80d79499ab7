// The I4T integration's UI flow in a real Home Assistant, driven in Debian's Chromium.
//
// Run by tests/ui/run.py (./scripts/test-ui) inside a private network namespace, against a
// fresh HA started by scripts/develop --bare: onboarding, MQTT, adding the gateway, adding a
// node group and looking at its devices, all by clicking in the UI. Every step asserts what
// it expects on the page and fails after a bounded wait. playwright-core's CSS selectors
// pierce open shadow roots, so HA's custom elements (ha-*, mwc-*, md-*) are reached directly.
//
// Environment: HA_URL, SHOTS (folder for the screenshots kept in docs/), WORK (folder for a
// failure screenshot), MQTT_PORT, BRAND_ICON (the integration's icon.png).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const HA_URL = process.env.HA_URL ?? 'http://127.0.0.1:8123';
const SHOTS = process.env.SHOTS ?? '.';
const WORK = process.env.WORK ?? '.';
const MQTT_PORT = process.env.MQTT_PORT ?? '1883';
const STEP_TIMEOUT = 30_000; // ms, the longest any single element may take to show up
const STATE_TIMEOUT = 90_000; // ms, for entity states that follow the things' reports

const OWNER = { name: 'I4T Tester', username: 'tester', password: 'i4t-ui-test-password' };
const GROUP = 'Kitchen sensors';
const MEMBERS = ['Simulated bthome 2', 'Simulated native 0', 'Simulated native 1'];
const NOT_MEMBERS = ['Simulated bthome 3'];
const SEED = 'Simulated native 0';
const NODE = 'Simulated bthome 2'; // a BLE thing: it reaches HA through HA's Bluetooth stack

const started = Date.now();
const log = (message) =>
  console.log(`[ui ${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}`);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium', // Debian's; never a downloaded browser
  headless: true,
  args: [
    ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
    // Belt and braces next to the network namespace: no name resolves but loopback.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
    '--disable-dev-shm-usage',
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, locale: 'en-US' });
page.setDefaultTimeout(STEP_TIMEOUT);

// HA loads integration logos from its brands site, which is out of reach here: answer
// those requests in the browser, with our own icon for i4t and an empty image otherwise,
// so that the screenshots show no broken-image marks.
const brandIcon = readFileSync(process.env.BRAND_ICON);
const blank = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg==',
  'base64',
);
await page.route(/^https:\/\/brands\.home-assistant\.io\//, (route) =>
  route.fulfill({
    contentType: 'image/png',
    body: /\/i4t\/(dark_)?(icon|logo)/.test(route.request().url()) ? brandIcon : blank,
  }),
);

let step = 'start';
const shot = async (name) => {
  await page.waitForTimeout(400); // let ripples and dialog transitions settle
  await page.screenshot({ path: join(SHOTS, name), animations: 'disabled' });
  log(`screenshot ${name}`);
};
const see = async (selector, text, timeout = STEP_TIMEOUT) => {
  const locator = text === undefined ? page.locator(selector) : page.locator(selector, { hasText: text });
  await locator.first().waitFor({ state: 'visible', timeout });
  return locator.first();
};
// An entity row of a device page: its name and the state text it must show.
const seeRow = (name, state) =>
  see(`ha-device-entities-card hui-generic-entity-row:has-text("${name}")`, state, STATE_TIMEOUT);
const begin = (name) => {
  step = name;
  log(name);
};

try {
  // -- 1. Onboarding: the owner, the location, the country, analytics, done -----------------
  begin('onboarding: welcome page');
  await page.goto(HA_URL);
  await (await see('onboarding-welcome ha-button', 'Create my smart home')).click();

  begin('onboarding: create the owner user');
  await see('onboarding-create-user');
  await page.locator('onboarding-create-user input[name=name]').fill(OWNER.name);
  await page.locator('onboarding-create-user input[name=username]').fill(OWNER.username);
  await page.locator('onboarding-create-user input[name=password]').fill(OWNER.password);
  await page.locator('onboarding-create-user input[name=password_confirm]').fill(OWNER.password);
  await shot('01-onboarding.png');
  await page.locator('onboarding-create-user mwc-button', { hasText: 'Create account' }).click();

  begin('onboarding: home location, country, analytics, integrations');
  await see('onboarding-location'); // the map's tiles stay empty: no internet
  await page.locator('onboarding-core-config mwc-button', { hasText: 'Next' }).click();
  await see('onboarding-core-config ha-country-picker');
  await page.locator('onboarding-core-config mwc-button', { hasText: 'Next' }).click();
  await (await see('onboarding-analytics mwc-button', 'Next')).click();
  await (await see('onboarding-integrations ha-button', 'Finish')).click();
  await page.waitForURL(/\/lovelace/);
  await see('home-assistant ha-sidebar', 'Settings');

  // -- 2. MQTT on the gateway's embedded broker, through the add-integration dialog -----------
  const addIntegration = async (search, brand) => {
    await page.goto(`${HA_URL}/config/integrations/dashboard`);
    await (await see('ha-config-integrations-dashboard ha-fab', 'Add integration')).click();
    await page.locator('dialog-add-integration search-input input').fill(search);
    await (await see('dialog-add-integration ha-integration-list-item', brand)).click();
  };
  begin('MQTT: Settings > Devices & services > Add integration > MQTT');
  await addIntegration('MQTT', 'MQTT');
  // MQTT is a brand of several integrations: the first one is the broker connection.
  await (await see('ha-domain-integrations ha-integration-list-item', 'MQTT')).click();
  await see('step-flow-form input[name=broker]');
  await page.locator('step-flow-form input[name=broker]').fill('127.0.0.1');
  await page.locator('step-flow-form ha-selector-number input').fill(MQTT_PORT);
  await page.locator('step-flow-form mwc-button', { hasText: 'Submit' }).click();
  await see('step-flow-create-entry', 'Created configuration for 127.0.0.1');
  await page.locator('step-flow-create-entry mwc-button', { hasText: 'Finish' }).click();

  // -- 3. The I4T integration: Add integration > I4T Gateway > pick the gateway -------------
  begin('I4T: Add integration > I4T Gateway');
  await addIntegration('I4T', 'I4T Gateway');
  // The gateway announced itself on MQTT, so HA may offer that discovery first: take the
  // user step ("Setup another instance"), which lists every gateway on the broker.
  const pickForm = page.locator('step-flow-form', { hasText: 'Choose an I4T gateway' });
  const another = page.locator('ha-domain-integrations mwc-list-item', {
    hasText: 'Setup another instance',
  });
  await pickForm.or(another).first().waitFor({ state: 'visible' });
  if (await another.isVisible()) await another.click();
  begin('I4T: pick the gateway and submit');
  const gateway = await see('step-flow-form ha-formfield', 'Development gateway');
  await gateway.locator('ha-radio').click();
  await shot('02-choose-gateway.png');
  await page.locator('step-flow-form mwc-button', { hasText: 'Submit' }).click();
  const created = await see('step-flow-create-entry', 'Created configuration for Development gateway');
  for (const device of [...MEMBERS, ...NOT_MEMBERS]) await see('step-flow-create-entry', device);
  await shot('03-gateway-added.png');
  await created.locator('mwc-button', { hasText: 'Finish' }).click();

  // -- 4. A node group: the gateway entry's "Add node group" ----------------------------------
  begin('node group: I4T Gateway > entry menu > Add node group');
  // HA opens the integration's page after a new entry; from the dashboard, its card does.
  // The entry's row is the one with a menu (a discovered gateway's row has an Add button).
  const entryRow = page
    .locator('ha-config-integration-page ha-md-list-item', {
      hasText: 'Development gateway',
      has: page.locator('ha-md-button-menu'),
    })
    .first();
  const card = page.locator('ha-integration-card', { hasText: 'I4T Gateway' });
  await entryRow.or(card).first().waitFor({ state: 'visible' });
  if (!(await entryRow.isVisible())) await card.click();
  await entryRow.locator('ha-md-button-menu ha-icon-button').first().click();
  await (await see('ha-md-menu-item', 'Add node group')).click();
  begin('node group: name, members, seed');
  await see('step-flow-form', 'New node group');
  await page.locator('step-flow-form input[name=name]').fill(GROUP);
  // The members and seeds lists are the form's first two select selectors; HA ticks the
  // first member of a required list by itself, so every box is set explicitly.
  const box = (list, label) =>
    page
      .locator('step-flow-form ha-selector-select')
      .nth(list)
      .locator('ha-formfield', { hasText: label })
      .locator('input');
  for (const member of MEMBERS) await box(0, member).check();
  for (const other of NOT_MEMBERS) await box(0, other).uncheck();
  await box(1, SEED).check();
  await shot('04-add-node-group.png');
  await page.locator('step-flow-form mwc-button', { hasText: 'Submit' }).click();
  await see('step-flow-create-entry', `Created configuration for ${GROUP}`);
  await page.locator('step-flow-create-entry mwc-button', { hasText: 'Finish' }).click();
  await see('ha-config-integration-page ha-md-list-item', GROUP); // the subentry's row

  // -- 5. The group's device and a member's device ---------------------------------------------
  begin('node group device: Status and member counts');
  await (await see('ha-config-integration-page a', 'devices')).click();
  await (await see('ha-data-table .mdc-data-table__row', GROUP)).click();
  await page.waitForURL(/\/config\/devices\/device\//);
  await see('ha-config-device-page', 'Node group');
  await seeRow('Status', 'Healthy');
  await seeRow('Healthy members', `${MEMBERS.length} members`);
  await seeRow('Broken members', '0 members');
  await seeRow('Dead members', '0 members');
  await shot('05-node-group.png');

  begin(`node device: ${NODE}, its status and readings`);
  await page.goBack();
  await (await see('ha-data-table .mdc-data-table__row', NODE)).click();
  await page.waitForURL(/\/config\/devices\/device\//);
  await see('ha-config-device-page', `Connected via ${GROUP}`);
  await seeRow('Status', 'Healthy');
  await seeRow('Connectivity', 'Connected');
  await seeRow('Temperature', /\d °[CF]/);
  await seeRow('Humidity', /\d %|\d%/);
  await shot('06-node.png');

  log('every step passed');
  await browser.close();
} catch (error) {
  console.error(`[ui] FAILED at step "${step}" on ${page.url()}:\n${error.message}`);
  await page.screenshot({ path: join(WORK, 'failure.png') }).catch(() => {});
  console.error(`[ui] the page at the failure: ${join(WORK, 'failure.png')}`);
  await browser.close();
  process.exit(1);
}

/**
 * The isogear server package. Its library export is the typed client, from @isogear/client
 * (which this package depends on); the server is `dist/main.js`, run by `npm start` or
 * `isogear serve`.
 */
export * from '@isogear/client';
